//! The `[events]` section: where events go without Kafka, and how durably.

use std::{path::PathBuf, time::Duration};

use ocpp::OcppVersion;
use serde::{Deserialize, Serialize};

use crate::config_check::InvalidOption;

/// Where the embedded sink writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOutput {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to `events.file`.
    File,
    /// Only the in-memory ring.
    None,
}

/// The embedded event sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Where events are written.
    pub output: EventOutput,
    /// The JSON-lines file, when `output = "file"`.
    pub file: Option<PathBuf>,
    /// Events kept in memory for `GET /api/v1/events`.
    pub ring_size: usize,
    /// Events that may wait for the writer; when full, sessions wait (backpressure).
    pub queue_capacity: usize,
    /// Actions whose CALLRESULT is sent only after their event is durable in the sink.
    pub durable_actions: Vec<String>,
    /// Whether a batch of events written to `events.file` is synced to disk before it is
    /// acknowledged. `off`: written and flushed to the operating system, which survives
    /// a crash of the gateway but not of the machine.
    pub fsync: Fsync,
    /// How long every write may keep failing (a full disk, a closed stdout) before the
    /// gateway reports itself not ready; the first successful write makes it ready again.
    #[serde(with = "humantime_serde")]
    pub unready_after: Duration,
}

/// When the embedded sink syncs the events file to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Never: durable means written to the operating system.
    Off,
    /// Once per batch (group commit), before its events are acknowledged.
    PerBatch,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            output: EventOutput::Stdout,
            file: None,
            ring_size: 1000,
            queue_capacity: 4096,
            durable_actions: [
                "BootNotification",
                "StatusNotification",
                "StartTransaction",
                "StopTransaction",
                "MeterValues",
                "TransactionEvent",
            ]
            .map(String::from)
            .to_vec(),
            fsync: Fsync::Off,
            unready_after: Duration::from_secs(5),
        }
    }
}

impl EventsConfig {
    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), InvalidOption> {
        let invalid = InvalidOption::new;
        if self.unready_after.is_zero() {
            return Err(invalid("events.unready_after", "must be greater than zero"));
        }
        let events_file_missing = self
            .file
            .as_ref()
            .is_none_or(|path| path.as_os_str().is_empty());
        if self.output == EventOutput::File && events_file_missing {
            return Err(invalid(
                "events.file",
                "is required when events.output = \"file\"",
            ));
        }
        if let Some(unknown) = self.durable_actions.iter().find(|action| {
            !OcppVersion::ALL
                .into_iter()
                .any(|version| ocpp::catalogue::initiator(version, action).is_some())
        }) {
            return Err(InvalidOption {
                option: "events.durable_actions",
                reason: format!("{unknown:?} is not an OCPP action of any supported version"),
            });
        }
        if self.ring_size == 0 {
            return Err(invalid("events.ring_size", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("events.queue_capacity", "must be at least 1"));
        }
        Ok(())
    }
}
