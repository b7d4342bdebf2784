//! The command consumer: backend commands from Kafka to charge points, and exactly one
//! result record per command.
//!
//! Commands are processed concurrently (each may wait for its charge point), but a
//! partition's offset is committed only up to the oldest command whose result is not yet
//! acknowledged by the brokers: a crash redelivers every command without a durable result.
//! Between consume and call sits the single step a cluster will extend: finding the
//! session ([`Commander::send`]). This module only adapts records to
//! [`CommandRequest`]s and [`CommandReport`]s to result records.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;

use chrono::{DateTime, Utc};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::Headers,
    Message, Offset, TopicPartitionList,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{client_config, KafkaBus, CLOUDEVENTS_CONTENT_TYPE};
use crate::{
    backend::{CommandRejected, CommandReport, CommandRequest, Commander},
    event::{CommandResult, Event, EventData, COMMAND_RESULT},
    labels::{CommandSource, CommandStatus},
    metrics::{any_version_action_label, ActionLabels, Metrics, TopicLabels},
    session::{CallOutcome, QueueMode},
};

/// How long to wait before retrying to set up the consumer or to produce a result.
const RETRY: Duration = Duration::from_secs(1);
/// Most command ids remembered for de-duplication.
const MAX_REMEMBERED_IDS: usize = 200_000;

/// A command record (plain JSON, or the `data` of a CloudEvent).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CommandRecord {
    command_id: String,
    charge_point_id: String,
    action: String,
    payload: Value,
    expires_at: Option<DateTime<Utc>>,
    timeout_seconds: Option<u64>,
}

/// What the command consumer needs.
pub struct CommandConsumer {
    /// Sends commands to charge points.
    pub commander: Arc<Commander>,
    /// The bus the commands come from and the results go to.
    pub bus: Arc<KafkaBus>,
    /// The traffic metrics (`ocppgw_commands_total`).
    pub metrics: Arc<Metrics>,
    /// This instance's name (results' `gatewayNode`, the static group member id).
    pub node_id: String,
    /// How long shutdown waits for the commands in progress.
    pub drain_timeout: Duration,
    /// This node's cluster, which remembers command ids across nodes.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// How often a node that re-reads a command another node is sending looks again.
const PENDING_POLL: Duration = Duration::from_millis(500);

/// What the cluster's memory of a command id says to do with a record.
#[derive(Debug, PartialEq)]
enum Sighting {
    /// Send it: no node has.
    Send,
    /// Another node wrote its result: nothing is owed.
    Answered,
    /// A node began sending it and is gone, or never finished: its delivery is unknown.
    Unknown(String),
}

/// Marks `command_id` as being sent here, or learns what became of it elsewhere. A
/// command another live node is sending (its partition moved here meanwhile) is waited
/// for, so that it ends with exactly one result. A registry that does not answer is asked
/// again for up to `cluster.lease_time` (a blink must not let two nodes send one
/// command); beyond that, the local memory of ids is all there is and the command is
/// sent.
async fn sighting(parts: &CommandConsumer, command_id: &str, longest: Duration) -> Sighting {
    use crate::cluster::redis_registry::CommandMark;
    let Some(cluster) = &parts.cluster else {
        return Sighting::Send;
    };
    let registry = cluster.registry();
    let ttl = cluster.config().command_id_ttl;
    let reading = uuid::Uuid::new_v4().simple().to_string();
    let mark = retry_registry(cluster, || {
        registry.mark_command(
            command_id,
            cluster.node(),
            cluster.incarnation(),
            &reading,
            ttl,
        )
    })
    .await;
    let deadline = Instant::now() + longest;
    let mut mark = match mark {
        Ok(mark) => mark,
        Err(e) => {
            crate::warn_limited!(%command_id, error = %e, "command id not checked across nodes (registry unavailable); sending");
            return Sighting::Send;
        }
    };
    loop {
        match &mark {
            CommandMark::First => return Sighting::Send,
            CommandMark::Done => return Sighting::Answered,
            CommandMark::Pending { node, incarnation } => {
                let alive = cluster.is_alive(node, incarnation).await.unwrap_or(true);
                let mine = node == cluster.node() && incarnation == cluster.incarnation();
                if (!alive && !mine) || Instant::now() >= deadline {
                    return Sighting::Unknown(format!(
                        "node {node} was sending this command when its partition moved, and did not write a result; whether the charge point received it is unknown"
                    ));
                }
                tokio::time::sleep(PENDING_POLL).await;
                mark = match registry.command_mark(command_id).await {
                    Ok(Some(mark)) => mark,
                    Ok(None) => return Sighting::Send,
                    Err(_) => mark,
                };
            }
        }
    }
}

/// Marks `command_id` answered, asking a registry that does not answer again for up to
/// `cluster.lease_time`: a mark left `pending` makes a node that reads the record again
/// wait for it and then write a second result (`unknown`).
async fn mark_answered(cluster: &crate::cluster::Cluster, command_id: &str) {
    let ttl = cluster.config().command_id_ttl;
    let done = retry_registry(cluster, || cluster.registry().command_done(command_id, ttl)).await;
    if let Err(e) = done {
        warn!(%command_id, error = %e, "command result written but not marked across nodes");
    }
}

/// First pause between two tries of a registry operation; it doubles up to a second.
const REGISTRY_RETRY: Duration = Duration::from_millis(50);

/// Runs an idempotent registry operation until it succeeds or `cluster.lease_time` has
/// passed; each outcome is observed like any registry operation (metrics, health).
async fn retry_registry<T, F, Fut>(
    cluster: &crate::cluster::Cluster,
    mut operation: F,
) -> Result<T, crate::cluster::redis_registry::RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::cluster::redis_registry::RegistryError>>,
{
    let give_up = Instant::now() + cluster.config().lease_time;
    let mut pause = REGISTRY_RETRY;
    loop {
        let outcome = operation().await;
        match cluster.observe(crate::labels::RegistryOperation::CommandId, outcome) {
            Ok(value) => return Ok(value),
            Err(e) => {
                if Instant::now() + pause >= give_up {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Command ids seen recently.
struct Dedup {
    window: Duration,
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Dedup {
    fn new(window: Duration) -> Dedup {
        Dedup {
            window,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id`; `false` when it was already seen within the window.
    fn first_sighting(&mut self, id: &str) -> bool {
        let now = Instant::now();
        while let Some((at, old)) = self.order.front() {
            if now.duration_since(*at) < self.window && self.order.len() < MAX_REMEMBERED_IDS {
                break;
            }
            if self.seen.get(old) == Some(at) {
                self.seen.remove(old);
            }
            self.order.pop_front();
        }
        if self.seen.contains_key(id) {
            return false;
        }
        self.seen.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
        true
    }
}

/// Offsets in flight per partition; yields the offset to commit as results complete.
#[derive(Default)]
struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

#[derive(Default)]
struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

impl OffsetTracker {
    fn start(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        if offset < p.next {
            // Read again from an earlier offset: the partition was revoked and assigned
            // back, and another member may have committed less. What this consumer read
            // before must not move the commit past records it has not read this time.
            p.next = offset;
            p.committed = p.committed.min(offset);
        }
        p.in_flight.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// Marks `offset` done; returns the new commit position when it advanced.
    fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        p.in_flight.remove(&offset);
        let position = p.in_flight.first().copied().unwrap_or(p.next);
        (position > p.committed).then(|| {
            p.committed = position;
            position
        })
    }
}

/// Runs the command consumer until `stop`, then waits for commands in progress.
pub async fn run(consumer: Arc<CommandConsumer>, stop: CancellationToken) {
    let bus = &consumer.bus;
    let dedup = Arc::new(Mutex::new(Dedup::new(bus.config().command_dedup_window)));
    loop {
        match run_once(&consumer, &dedup, &stop).await {
            Ok(()) => return,
            Err(e) => {
                bus.set_command_consumer_error(e.clone());
                warn!(error = %e, "command consumer not running; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

async fn run_once(
    consumer_parts: &Arc<CommandConsumer>,
    dedup: &Arc<Mutex<Dedup>>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let bus = &consumer_parts.bus;
    let commands_topic = bus.metrics().topics.commands;
    let config = bus.config();
    let mut client = client_config(config, &config.consumer);
    let session_timeout = config.command_session_timeout.as_millis();
    client
        .set("group.id", &config.command_group)
        .set("session.timeout.ms", session_timeout.to_string())
        .set("heartbeat.interval.ms", (session_timeout / 5).to_string())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", config.command_start.as_str())
        .set("enable.partition.eof", "false")
        .set(
            "statistics.interval.ms",
            super::stats::STATISTICS_INTERVAL_MS,
        );
    // A gateway that crashed and restarts under the same node id rejoins as the same
    // static member: the group hands its partitions back without waiting for the dead
    // member's session to expire.
    if config.static_membership {
        client.set("group.instance.id", &consumer_parts.node_id);
    }
    let consumer: Arc<StreamConsumer<super::stats::StatsContext>> = Arc::new(
        client
            .create_with_context(super::stats::StatsContext::new(bus.metrics().clone()))
            .map_err(|e| e.to_string())?,
    );
    consumer
        .subscribe(&[&config.topics.commands])
        .map_err(|e| e.to_string())?;
    bus.set_command_consumer(Some(consumer.clone()));
    let _clear = ClearOnDrop(bus.clone());
    info!(topic = %config.topics.commands, group = %config.command_group, "command consumer subscribed");
    let limit = config.max_concurrent_commands;
    let slots = Arc::new(Semaphore::new(limit));
    let offsets = Arc::new(Mutex::new(OffsetTracker::default()));
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.map_err(|e| e.to_string())?,
        };
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                // Repeats every poll while the brokers are down.
                crate::warn_limited!(error = %e, "command consumer error");
                continue;
            }
        };
        let received_at = Utc::now();
        if let Some(created) = message.timestamp().to_millis() {
            let age = (received_at.timestamp_millis() - created).max(0) as f64 / 1000.0;
            bus.metrics()
                .record_age
                .get_or_create(&TopicLabels {
                    topic: commands_topic,
                })
                .observe(age);
        }
        let (topic, partition, offset) = (
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        let record = message.payload().unwrap_or_default().to_vec();
        offsets.lock().start(partition, offset);
        let (parts, dedup, offsets, consumer, stop) = (
            consumer_parts.clone(),
            dedup.clone(),
            offsets.clone(),
            consumer.clone(),
            stop.clone(),
        );
        // Created outside any span: a trace of its own, joined to the backend's trace
        // in the record's headers.
        let span = info_span!(
            "kafka.consume",
            otel.name = %format!("{} process", topic),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = %topic,
            messaging.destination.partition.id = partition,
            messaging.kafka.offset = offset,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Some(headers) = message.headers() {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .filter_map(|h| Some((h.key, std::str::from_utf8(h.value?).ok()?)))
                .collect();
            crate::telemetry::traces::adopt_parent(&span, pairs);
        }
        crate::telemetry::traces::record_ids(&span);
        tokio::spawn(
            async move {
                let settled = match handle(&parts, &dedup, &record, received_at).await {
                    Some((result, status)) => {
                        let action =
                            any_version_action_label(result.action.as_deref().unwrap_or_default());
                        parts.metrics.command(CommandSource::Kafka, action, status);
                        let command_id = result.command_id.clone();
                        let published = publish_result(&parts.bus, result, &stop).await;
                        if let (true, Some(cluster)) = (published, &parts.cluster) {
                            mark_answered(cluster, &command_id).await;
                        }
                        published
                    }
                    None => true,
                };
                if !settled {
                    // Not committed: the record is read again after a restart.
                    drop(slot);
                    return;
                }
                // Committed under the lock: two tasks must not commit out of order.
                let mut tracker = offsets.lock();
                // Only for a partition still assigned here: after a rebalance its new
                // owner commits, and a stale position from here could skip records the
                // new owner has not finished.
                let assigned = consumer
                    .assignment()
                    .is_ok_and(|list| list.find_partition(&topic, partition).is_some());
                if let Some(position) = tracker.finish(partition, offset).filter(|_| assigned) {
                    let mut commit = TopicPartitionList::new();
                    if commit
                        .add_partition_offset(&topic, partition, Offset::Offset(position))
                        .is_ok()
                    {
                        if let Err(e) = consumer.commit(&commit, CommitMode::Async) {
                            warn!(error = %e, position, "command offset not committed");
                        }
                    }
                }
                drop(tracker);
                drop(slot);
            }
            .instrument(span),
        );
    }
    // Let commands in progress finish (sessions are being closed, so they end soon).
    if tokio::time::timeout(
        consumer_parts.drain_timeout,
        slots.acquire_many(limit as u32),
    )
    .await
    .is_err()
    {
        warn!("commands still in progress at shutdown");
    }
    Ok(())
}

/// Takes the consumer out of the bus's view when `run_once` ends, however it ends.
struct ClearOnDrop(Arc<KafkaBus>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.set_command_consumer(None);
    }
}

/// Handles one record; `None` when no result is owed (a duplicate, or no command id).
async fn handle(
    parts: &CommandConsumer,
    dedup: &Mutex<Dedup>,
    record: &[u8],
    received_at: DateTime<Utc>,
) -> Option<(CommandResult, CommandStatus)> {
    let value: Value = match serde_json::from_slice(record) {
        Ok(value) => value,
        Err(e) => {
            warn!(error = %e, "command record is not JSON and has no commandId; skipped");
            return None;
        }
    };
    let body = if value.get("specversion").is_some() {
        value.get("data").cloned().unwrap_or(Value::Null)
    } else {
        value
    };
    parts
        .bus
        .metrics()
        .commands_consumed
        .get_or_create(&ActionLabels {
            action: any_version_action_label(body["action"].as_str().unwrap_or_default()),
        })
        .inc();
    let result = |command_id: &str, report: CommandReport| {
        let status = report.status;
        let result = CommandResult {
            command_id: command_id.to_owned(),
            charge_point_id: body["chargePointId"].as_str().map(str::to_owned),
            action: body["action"].as_str().map(str::to_owned),
            status: status.as_str(),
            response: report.response,
            error: report.error.map(|error| error.to_object()),
            received_at,
            completed_at: Utc::now(),
            gateway_node: parts.node_id.clone(),
        };
        (result, status)
    };
    let command: CommandRecord = match serde_json::from_value(body.clone()) {
        Ok(command) => command,
        Err(e) => {
            return match body["commandId"].as_str() {
                Some(id) if !id.is_empty() => {
                    let rejected = CommandRejected::Malformed(format!("malformed command: {e}"));
                    Some(result(id, CommandReport::rejected(&rejected)))
                }
                _ => {
                    crate::warn_limited!(error = %e, "command record has no commandId; skipped");
                    None
                }
            };
        }
    };
    if !dedup.lock().first_sighting(&command.command_id) {
        info!(command_id = %command.command_id, "duplicate command id within the window; not sent again");
        return None;
    }
    let id = command.command_id.as_str();
    // The producer of the record learns why nothing happened; an empty id is remembered
    // like any other, so only its first sighting gets this result.
    if id.is_empty() {
        let rejected = CommandRejected::Malformed("commandId must not be empty".to_owned());
        return Some(result(id, CommandReport::rejected(&rejected)));
    }
    let request =
        match CommandRequest::new(command.action, command.payload, command.timeout_seconds) {
            Ok(request) => request,
            Err(rejected) => return Some(result(id, CommandReport::rejected(&rejected))),
        };
    let remaining = command
        .expires_at
        .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO));
    let expired = |description: &str| CommandReport {
        status: CommandStatus::Expired,
        response: None,
        error: Some(crate::backend::CommandError::Described(
            description.to_owned(),
        )),
    };
    if remaining == Some(Duration::ZERO) {
        return Some(result(id, expired("expiresAt has passed")));
    }
    let timeout = parts.commander.timeout_of(&request);
    let longest = timeout
        + parts
            .cluster
            .as_ref()
            .map_or(Duration::ZERO, |c| c.config().forward_timeout);
    match sighting(parts, id, longest).await {
        Sighting::Send => {}
        Sighting::Answered => {
            info!(command_id = %id, "command already answered by another node; not sent again");
            return None;
        }
        Sighting::Unknown(description) => {
            let report = CommandReport {
                status: CommandStatus::Unknown,
                response: None,
                error: Some(crate::backend::CommandError::Described(description)),
            };
            return Some(result(id, report));
        }
    }
    let request = CommandRequest {
        timeout: Some(remaining.map_or(timeout, |left| left.min(timeout))),
        ..request
    };
    debug!(command_id = %id, charge_point_id = %command.charge_point_id, action = %request.action, "sending command");
    let outcome = parts
        .commander
        .send(&command.charge_point_id, &request, QueueMode::Wait)
        .await;
    let report = match outcome {
        Ok(CallOutcome::Timeout) if command.expires_at.is_some_and(|at| at <= Utc::now()) => {
            expired("the charge point did not answer in time")
        }
        // Waiting for room, a full queue ends as a timeout; this is only defensive.
        Ok(CallOutcome::QueueFull) => {
            CommandReport::of(&command.charge_point_id, Ok(CallOutcome::NotConnected))
        }
        outcome => CommandReport::of(&command.charge_point_id, outcome),
    };
    Some(result(id, report))
}

/// Produces a result, retrying until the brokers acknowledge it or shutdown.
async fn publish_result(
    bus: &Arc<KafkaBus>,
    result: CommandResult,
    stop: &CancellationToken,
) -> bool {
    let subject = result
        .charge_point_id
        .clone()
        .unwrap_or_else(|| result.command_id.clone());
    let (command_id, status) = (result.command_id.clone(), result.status);
    let node = result.gateway_node.clone();
    let event = Event::new(
        Event::source_of(&node),
        COMMAND_RESULT,
        &subject,
        EventData::CommandResult(Box::new(result)),
    );
    let Ok(value) = serde_json::to_vec(&event) else {
        return false;
    };
    loop {
        let produced = bus
            .produce(
                &bus.config().topics.command_results,
                &subject,
                value.clone(),
                CLOUDEVENTS_CONTENT_TYPE,
                COMMAND_RESULT,
            )
            .await;
        let acked = match produced {
            Ok(acked) => acked.await.unwrap_or(Err(crate::sink::SinkError::Closed)),
            Err(e) => Err(e),
        };
        match acked {
            Ok(()) => {
                debug!(%command_id, status, "command result produced");
                return true;
            }
            Err(e) => {
                warn!(error = %e, %command_id, "command result not produced; retrying");
                tokio::select! {
                    _ = stop.cancelled() => {
                        warn!(%command_id, "shutdown before the command result was produced; the command will be redelivered");
                        return false;
                    }
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_position_waits_for_the_oldest_in_flight() {
        let mut tracker = OffsetTracker::default();
        for offset in 10..13 {
            tracker.start(0, offset);
        }
        // 10 is still in flight: the position stays at 10 however many later ones finish.
        assert_eq!(tracker.finish(0, 11), Some(10));
        assert_eq!(tracker.finish(0, 12), None);
        assert_eq!(tracker.finish(0, 10), Some(13));
        tracker.start(1, 0);
        assert_eq!(tracker.finish(1, 0), Some(1));
    }

    #[test]
    fn a_partition_read_again_from_earlier_does_not_commit_what_is_not_read() {
        let mut tracker = OffsetTracker::default();
        for offset in 100..141 {
            tracker.start(0, offset);
            tracker.finish(0, offset);
        }
        // Assigned back at 131 (another member committed there): finishing 131 commits
        // 132, not the 141 this consumer reached before.
        tracker.start(0, 131);
        assert_eq!(tracker.finish(0, 131), Some(132));
        tracker.start(0, 132);
        assert_eq!(tracker.finish(0, 132), Some(133));
    }

    #[tokio::test(start_paused = true)]
    async fn dedup_remembers_within_the_window() {
        let mut dedup = Dedup::new(Duration::from_secs(60));
        assert!(dedup.first_sighting("a"));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!dedup.first_sighting("a"));
        assert!(dedup.first_sighting("b"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(dedup.first_sighting("a"));
        assert!(!dedup.first_sighting("b"));
    }
}
