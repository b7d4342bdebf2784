//! The Kafka bus: events out, backend replies in, commands in, command results out.
//!
//! One idempotent producer (`acks=all`) carries every record the gateway writes. A
//! semaphore bounds the records waiting for broker acknowledgement: when it is exhausted,
//! whoever produces waits, which is how a slow or absent broker slows the sockets down
//! instead of growing memory.

pub mod commands;
pub mod config;
pub mod metrics;
pub mod replies;
mod sink;
pub mod stats;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::{Mutex, RwLock};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use sink::KafkaSink;
use stats::StatsContext;

pub use self::config::{KafkaConfig, TopicsConfig};

use self::metrics::KafkaMetrics;
use crate::{
    metrics::{TopicLabels, TopicOutcomeLabels},
    sink::{metrics::SinkMetrics, SinkError, WriteFailures},
};

/// How often the bus checks that the brokers answer.
const MONITOR_INTERVAL: Duration = Duration::from_secs(2);
/// How long one broker check may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// The `content-type` header of CloudEvents in structured JSON mode.
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The shared producer and the bus's health.
pub struct KafkaBus {
    config: KafkaConfig,
    /// `ocppgw_events_published_total`.
    metrics: SinkMetrics,
    kafka_metrics: Arc<KafkaMetrics>,
    // Replaced as a whole after a fatal error: an idempotent producer that lost track of
    // its sequence (e.g. a broker that fences the epoch bump after timeouts) never
    // recovers, and librdkafka requires a new instance.
    producer: RwLock<Arc<FutureProducer<StatsContext>>>,
    in_flight: Arc<Semaphore>,
    connected: AtomicBool,
    topics_ready: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Deliveries that keep failing while the brokers answer (a broker that restarted
    /// empty, a topic that is gone) make the bus unready, like an unreachable broker.
    deliveries: Mutex<WriteFailures>,
    /// The command consumer while it runs, for `/health`.
    command_consumer: Mutex<CommandConsumerSlot>,
}

/// What `/health` knows of the command consumer.
#[derive(Default)]
struct CommandConsumerSlot {
    consumer: Option<Arc<rdkafka::consumer::StreamConsumer<StatsContext>>>,
    last_error: Option<String>,
}

/// The bus could not be set up (a configuration problem).
#[derive(Debug, thiserror::Error)]
#[error("Kafka client configuration rejected: {0}")]
pub struct BusConfigError(#[from] KafkaError);

/// Base librdkafka settings every gateway client shares, then the user's overrides.
pub(crate) fn client_config(
    config: &KafkaConfig,
    overrides: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "charge-point-gateway")
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.max.ms", "2000");
    for (key, value) in overrides {
        client.set(key, value);
    }
    client
}

impl KafkaBus {
    /// Creates the producer. Does not wait for the brokers: an absent broker is a
    /// run-time state (`/readyz` says so), not a start-up failure.
    pub fn new(
        config: &KafkaConfig,
        metrics: SinkMetrics,
        kafka_metrics: Arc<KafkaMetrics>,
    ) -> Result<Arc<KafkaBus>, BusConfigError> {
        let producer = Self::create_producer(config, &kafka_metrics)?;
        Ok(Arc::new(KafkaBus {
            config: config.clone(),
            metrics,
            kafka_metrics,
            producer: RwLock::new(Arc::new(producer)),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            connected: AtomicBool::new(false),
            topics_ready: AtomicBool::new(!config.create_topics),
            last_error: Mutex::new(Some(format!(
                "Kafka brokers {} not reached yet",
                config.brokers
            ))),
            deliveries: Mutex::new(WriteFailures::new(config.unready_after)),
            command_consumer: Mutex::new(CommandConsumerSlot::default()),
        }))
    }

    fn create_producer(
        config: &KafkaConfig,
        metrics: &Arc<KafkaMetrics>,
    ) -> Result<FutureProducer<StatsContext>, KafkaError> {
        // The user's settings first; the delivery guarantees are not theirs to switch off.
        let mut client = client_config(config, &config.producer);
        client
            .set(
                "compression.type",
                config
                    .producer
                    .get("compression.type")
                    .map_or("lz4", String::as_str),
            )
            .set(
                "linger.ms",
                config.producer.get("linger.ms").map_or("5", String::as_str),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            // Above max_in_flight, so the semaphore (not librdkafka) is what waits.
            .set(
                "queue.buffering.max.messages",
                (config.max_in_flight * 2 + 1000).to_string(),
            )
            .set("statistics.interval.ms", stats::STATISTICS_INTERVAL_MS);
        client.create_with_context(StatsContext::new(metrics.clone()))
    }

    fn producer(&self) -> Arc<FutureProducer<StatsContext>> {
        self.producer.read().clone()
    }

    /// Replaces `failed` with a new producer when `error` shows that its idempotence
    /// state is lost (once: callers that saw the same failed instance do not replace its
    /// successor).
    ///
    /// A record that timed out while the brokers answer counts too: a broker that
    /// restarted without its state answers the producer's id with `UnknownProducerId`
    /// for ever, and librdkafka only bumps the epoch locally and retries until every
    /// record times out, never asking for a new id. A new instance gets one.
    fn recover_from_fatal(&self, failed: &Arc<FutureProducer<StatsContext>>, error: &KafkaError) {
        let (code, reason) = match failed.client().fatal_error() {
            Some(fatal) => fatal,
            None => match error.rdkafka_error_code() {
                Some(code @ RDKafkaErrorCode::MessageTimedOut)
                    if self.connected.load(Ordering::Relaxed) =>
                {
                    (code, error.to_string())
                }
                Some(
                    code @ (RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::InvalidProducerIdMapping
                    | RDKafkaErrorCode::Fatal),
                ) => (code, error.to_string()),
                _ => return,
            },
        };
        let mut current = self.producer.write();
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match Self::create_producer(&self.config, &self.kafka_metrics) {
            Ok(fresh) => {
                warn!(error = %code, %reason, "Kafka producer hit a fatal error; replaced it with a new instance");
                *current = Arc::new(fresh);
            }
            Err(e) => warn!(error = %e, "Kafka producer could not be recreated"),
        }
    }

    pub(crate) fn set_command_consumer(
        &self,
        consumer: Option<Arc<rdkafka::consumer::StreamConsumer<StatsContext>>>,
    ) {
        let mut slot = self.command_consumer.lock();
        if consumer.is_some() {
            slot.last_error = None;
        }
        slot.consumer = consumer;
    }

    pub(crate) fn set_command_consumer_error(&self, error: String) {
        self.command_consumer.lock().last_error = Some(error);
    }

    /// The command consumer's state for `/health`: `assigned` with its partitions,
    /// `waiting_for_assignment` (subscribed, the group has not given it partitions yet, or
    /// another member holds them all), or `down` with the reason it is not running.
    pub fn command_consumer_health(&self) -> serde_json::Value {
        use rdkafka::consumer::Consumer;
        let slot = self.command_consumer.lock();
        match &slot.consumer {
            Some(consumer) => {
                let partitions: Vec<i32> = consumer
                    .assignment()
                    .map(|list| list.elements().iter().map(|p| p.partition()).collect())
                    .unwrap_or_default();
                let status = if partitions.is_empty() {
                    "waiting_for_assignment"
                } else {
                    "assigned"
                };
                serde_json::json!({
                    "status": status,
                    "group": self.config.command_group,
                    "partitions": partitions,
                })
            }
            None => serde_json::json!({
                "status": "down",
                "group": self.config.command_group,
                "detail": slot.last_error.clone().unwrap_or_else(|| "not started".to_owned()),
            }),
        }
    }

    /// Records produced and not yet acknowledged (at most `kafka.max_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.config.max_in_flight - self.in_flight.available_permits()
    }

    /// The bus's metrics.
    pub fn metrics(&self) -> &Arc<KafkaMetrics> {
        &self.kafka_metrics
    }

    /// Updates the gauges that are read rather than counted, just before a scrape.
    pub fn refresh_gauges(&self) {
        let m = &self.kafka_metrics;
        m.in_flight.set(self.in_flight() as i64);
        m.in_flight_limit.set(self.config.max_in_flight as i64);
        m.connected.set(i64::from(self.readiness().is_ok()));
    }

    /// The Kafka configuration in force.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Whether the brokers answered the last check (and topics exist, when the gateway
    /// creates them), and deliveries have not kept failing for `kafka.unready_after`; or
    /// why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.connected.load(Ordering::Relaxed) && self.topics_ready.load(Ordering::Relaxed) {
            let deliveries = self.deliveries.lock().health(std::time::Instant::now());
            match deliveries.status {
                "down" => Err(format!(
                    "Kafka deliveries failing: {}",
                    deliveries.detail.unwrap_or_default()
                )),
                _ => Ok(()),
            }
        } else {
            Err(self
                .last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "Kafka not ready".to_owned()))
        }
    }

    /// Produces one record, waiting while `max_in_flight` records are unacknowledged.
    /// The returned receiver resolves when the brokers acknowledged (or refused) it.
    pub async fn produce(
        self: &Arc<Self>,
        topic: &str,
        key: &str,
        value: Vec<u8>,
        content_type: &'static str,
        event_type: &'static str,
    ) -> Result<oneshot::Receiver<Result<(), SinkError>>, SinkError> {
        let topic_label = self.kafka_metrics.topics.label_of(topic);
        let started = std::time::Instant::now();
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SinkError::Closed)?;
        let span = tracing::info_span!(
            "kafka.produce",
            otel.name = %format!("{topic} publish"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = %topic,
            messaging.kafka.message.key = %key,
        );
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(content_type),
        });
        for (name, value) in crate::telemetry::traces::inject(&span) {
            headers = headers.insert(Header {
                key: &name,
                value: Some(&value),
            });
        }
        let mut record = FutureRecord::to(topic)
            .key(key)
            .payload(&value)
            .headers(headers);
        let producer = self.producer();
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // Only non-awaited records can overfill librdkafka's queue; wait briefly.
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    self.recover_from_fatal(&producer, &e);
                    let refused = SinkError::Unavailable(e.to_string());
                    self.record_outcome(topic_label, event_type, &Err(refused.clone()), started);
                    return Err(refused);
                }
            }
        };
        let (ack, acked) = oneshot::channel();
        let bus = self.clone();
        tokio::spawn(async move {
            let outcome = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => {
                    bus.recover_from_fatal(&producer, &e);
                    Err(SinkError::Unavailable(e.to_string()))
                }
                Err(_) => Err(SinkError::Closed),
            };
            bus.record_outcome(topic_label, event_type, &outcome, started);
            if outcome.is_err() {
                span.record("otel.status_code", "error");
            }
            drop(span);
            drop(permit);
            let _ = ack.send(outcome);
        });
        Ok(acked)
    }

    /// Counts a record's outcome in the metrics and in the failures readiness follows,
    /// whether librdkafka refused it at once or the brokers answered.
    fn record_outcome(
        &self,
        topic: &'static str,
        event_type: &'static str,
        result: &Result<(), SinkError>,
        started: std::time::Instant,
    ) {
        {
            let mut deliveries = self.deliveries.lock();
            match result {
                Ok(()) => deliveries.succeeded(),
                Err(e) => deliveries.failed(e.to_string(), std::time::Instant::now()),
            }
        }
        let ok = result.is_ok();
        let outcome = if ok { "ok" } else { "error" };
        self.kafka_metrics
            .produce
            .get_or_create(&TopicOutcomeLabels { topic, outcome })
            .inc();
        if ok {
            self.kafka_metrics
                .produce_duration
                .get_or_create(&TopicLabels { topic })
                .observe(started.elapsed().as_secs_f64());
        }
        self.metrics.published(event_type, ok);
    }

    /// Waits (at most `timeout`) for every produced record to be acknowledged.
    pub async fn flush(self: &Arc<Self>, timeout: Duration) {
        let bus = self.clone();
        let flushed = tokio::task::spawn_blocking(move || bus.producer().flush(timeout)).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "Kafka producer not fully flushed at shutdown");
        }
    }

    /// Checks the brokers periodically and creates missing topics, until `stop`.
    pub async fn monitor(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let bus = self.clone();
            let topics = self.topic_names();
            let checked = tokio::task::spawn_blocking(move || {
                bus.producer()
                    .client()
                    .fetch_metadata(None, METADATA_TIMEOUT)
                    .map(|metadata| {
                        let missing = topics
                            .iter()
                            .filter(|name| {
                                !metadata.topics().iter().any(|topic| {
                                    topic.name() == name.as_str() && topic.error().is_none()
                                })
                            })
                            .count();
                        (metadata.brokers().len(), missing)
                    })
            })
            .await;
            match checked {
                Ok(Ok((brokers, missing))) if brokers > 0 => {
                    if !self.connected.swap(true, Ordering::Relaxed) {
                        info!(brokers, "Kafka brokers reachable");
                    }
                    // A broker that restarted without its data lost the topics too; records
                    // for a missing topic would time out one by one.
                    if missing > 0
                        && self.config.create_topics
                        && self.topics_ready.swap(false, Ordering::Relaxed)
                    {
                        warn!(missing, "Kafka topics are gone (a broker restarted without its data?); creating them again");
                    }
                    if !self.topics_ready.load(Ordering::Relaxed) {
                        match self.create_topics(brokers).await {
                            Ok(()) => self.topics_ready.store(true, Ordering::Relaxed),
                            Err(e) => self.set_error(format!("creating topics: {e}")),
                        }
                    }
                    if self.topics_ready.load(Ordering::Relaxed) {
                        *self.last_error.lock() = None;
                    }
                }
                Ok(Ok(_)) => self.lost("no brokers in metadata".to_owned()),
                Ok(Err(e)) => self.lost(e.to_string()),
                Err(e) => self.lost(e.to_string()),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(MONITOR_INTERVAL) => {}
            }
        }
    }

    fn lost(&self, error: String) {
        if self.connected.swap(false, Ordering::Relaxed) {
            warn!(error = %error, "Kafka brokers unreachable");
        }
        self.set_error(format!("Kafka unreachable: {error}"));
    }

    fn set_error(&self, error: String) {
        *self.last_error.lock() = Some(error);
    }

    /// The four topics the gateway uses.
    fn topic_names(&self) -> Vec<String> {
        let topics = &self.config.topics;
        [
            &topics.events,
            &topics.commands,
            &topics.command_results,
            &topics.replies,
        ]
        .into_iter()
        .cloned()
        .collect()
    }

    /// Creates the missing topics, with `kafka.topic_replication` replicas or as many as
    /// there are `brokers`, whichever is fewer (one broker in a lab or a test).
    async fn create_topics(&self, brokers: usize) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> =
            client_config(&self.config, &self.config.producer).create()?;
        let names = self.topic_names();
        let replication = self
            .config
            .topic_replication
            .min(i32::try_from(brokers).unwrap_or(i32::MAX))
            .max(1);
        if replication < self.config.topic_replication {
            warn!(
                brokers,
                configured = self.config.topic_replication,
                replication,
                "fewer brokers than kafka.topic_replication: creating topics with one replica per broker"
            );
        }
        let new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    self.config.topic_partitions,
                    TopicReplication::Fixed(replication),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(topic) => info!(%topic, "Kafka topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                        warn!(%topic, error = %code, "Kafka topic not created");
                    })
                }
            }
        }
        Ok(())
    }
}
