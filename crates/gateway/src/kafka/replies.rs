//! The Kafka adapter of backend replies: every instance reads every partition of the
//! replies topic (no consumer group), from the end, and hands each record to the
//! [`ReplyRouter`], which keeps those a CALL here waits for.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{client_config, KafkaConfig};
use crate::backend::ReplyRouter;

/// How long to wait before retrying to set up the consumer.
const RETRY: Duration = Duration::from_secs(2);

/// Reads the replies topic into `router` until `stop`.
pub async fn consume(router: Arc<ReplyRouter>, config: KafkaConfig, stop: CancellationToken) {
    loop {
        match consume_once(&router, &config, &stop).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, topic = %config.topics.replies, "reply consumer not running; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

async fn consume_once(
    router: &ReplyRouter,
    config: &KafkaConfig,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut client = client_config(config, &config.consumer);
    client
        // Never joins or commits: the group id only satisfies librdkafka.
        .set(
            "group.id",
            format!("charge-point-gateway-replies-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: StreamConsumer = client.create().map_err(|e| e.to_string())?;
    let topic = config.topics.replies.clone();
    // Start at each partition's current end, read from the high watermark: only
    // replies to CALLs from now on matter. (Some Kafka-compatible brokers resolve the
    // logical `Offset::End` wrongly; the watermark is answered correctly everywhere.)
    let (consumer, assignment) = tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(3);
        let partitions = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| e.to_string())?
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        if partitions == 0 {
            return Err("topic has no partitions (does it exist?)".to_owned());
        }
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(|e| e.to_string())?;
            assignment
                .add_partition_offset(&topic, partition, Offset::Offset(high))
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>((consumer, assignment))
    })
    .await
    .map_err(|e| e.to_string())??;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    router.set_assigned(true);
    info!(topic = %config.topics.replies, partitions = assignment.count(), "reply consumer assigned");
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => match router.deliver(message.payload().unwrap_or_default()) {
                Ok(true) => {}
                Ok(false) => debug!(
                    offset = message.offset(),
                    "reply for a CALL not waiting here"
                ),
                Err(e) => {
                    crate::warn_limited!(error = %e, offset = message.offset(), partition = message.partition(), "malformed reply record")
                }
            },
            Err(e) => warn!(error = %e, "reply consumer error"),
        }
    }
}
