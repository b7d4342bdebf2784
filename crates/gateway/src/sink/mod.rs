//! Event sinks: where event records go, and when they are safe.
//!
//! A sink accepts an event once it has room for it ([`EventSink::submit`] waits for room,
//! which is how a slow sink slows the sockets down instead of growing memory) and then
//! reports, through the returned [`Delivery`], when the event is durable. A charge point's
//! CALL for a durable action is answered only after its delivery succeeded.

pub mod config;
pub mod embedded;
pub mod metrics;
pub mod publisher;
pub mod ring;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::event::Event;

/// Why an event could not be made durable. Every variant is worth retrying later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The sink's destination failed (upstream: a file, stdout, a broker).
    #[error("event sink unavailable (upstream): {0}")]
    Unavailable(String),
    /// The sink was shut down before the event was written (internal).
    #[error("event sink closed (internal)")]
    Closed,
}

/// Resolves when a submitted event is durable, or with why it is not.
pub struct Delivery(oneshot::Receiver<Result<(), SinkError>>);

impl Delivery {
    /// A delivery that its sink reports through `receiver`.
    pub fn new(receiver: oneshot::Receiver<Result<(), SinkError>>) -> Delivery {
        Delivery(receiver)
    }
}

impl Future for Delivery {
    type Output = Result<(), SinkError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(SinkError::Closed)))
    }
}

/// A component's state, as shown by `/health`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ComponentHealth {
    /// `up`, `degraded` or `down`.
    pub status: &'static str,
    /// Human-readable detail (e.g. the last error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Where event records are written.
pub trait EventSink: Send + Sync + 'static {
    /// Waits until the sink has room, then takes `event`; the delivery resolves once the
    /// event is durable.
    fn submit(&self, event: Arc<Event>) -> BoxFuture<'_, Result<Delivery, SinkError>>;

    /// Resolves once everything submitted so far is written (or failed).
    fn flush(&self) -> BoxFuture<'_, ()>;

    /// The sink's current state.
    fn health(&self) -> ComponentHealth;
}

/// Tracks a sink's failing writes, so that readiness can follow a sink that refuses
/// everything.
///
/// One failed batch is a blip (a charge point retries its CALL); writes that keep failing
/// for `unready_after` mean every durable CALL is refused, and a gateway in that state
/// should stop receiving new charge points. The first successful write ends it.
#[derive(Debug)]
pub struct WriteFailures {
    unready_after: Duration,
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

impl WriteFailures {
    /// A tracker that reports `down` once writes have failed for `unready_after`.
    pub fn new(unready_after: Duration) -> WriteFailures {
        WriteFailures {
            unready_after,
            failing_since: None,
            last_error: None,
        }
    }

    /// A write succeeded: the sink is up again.
    pub fn succeeded(&mut self) {
        self.failing_since = None;
        self.last_error = None;
    }

    /// A write failed at `now` with `error`.
    pub fn failed(&mut self, error: String, now: Instant) {
        self.failing_since.get_or_insert(now);
        self.last_error = Some(error);
    }

    /// `up` while the last write succeeded, `degraded` while writes have failed for less
    /// than `unready_after`, `down` after that.
    pub fn health(&self, now: Instant) -> ComponentHealth {
        let Some(since) = self.failing_since else {
            return ComponentHealth {
                status: "up",
                detail: None,
            };
        };
        let failing_for = now.saturating_duration_since(since);
        let error = self.last_error.clone().unwrap_or_default();
        if failing_for >= self.unready_after {
            ComponentHealth {
                status: "down",
                detail: Some(format!(
                    "every write failed for {:.0} s: {error}",
                    failing_for.as_secs_f64()
                )),
            }
        } else {
            ComponentHealth {
                status: "degraded",
                detail: Some(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_make_the_sink_down_only_once_they_persist() {
        let start = Instant::now();
        let mut failures = WriteFailures::new(Duration::from_secs(5));
        assert_eq!(failures.health(start).status, "up");
        failures.failed("disk full".into(), start);
        let soon = start + Duration::from_secs(4);
        failures.failed("disk still full".into(), soon);
        let health = failures.health(soon);
        assert_eq!(health.status, "degraded");
        assert_eq!(health.detail.as_deref(), Some("disk still full"));
        // Measured from the first failure, not the latest.
        let later = start + Duration::from_secs(5);
        let health = failures.health(later);
        assert_eq!(health.status, "down");
        assert!(health.detail.unwrap().contains("disk still full"));
        failures.succeeded();
        assert_eq!(failures.health(later).status, "up");
        // A new failure starts a new grace period.
        failures.failed("again".into(), later);
        assert_eq!(failures.health(later).status, "degraded");
    }
}
