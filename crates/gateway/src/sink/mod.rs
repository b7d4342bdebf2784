//! Event sinks: where event records go, and when they are safe.
//!
//! A sink accepts an event once it has room for it ([`EventSink::submit`] waits for room,
//! which is how a slow sink slows the sockets down instead of growing memory) and then
//! reports, through the returned [`Delivery`], when the event is durable. A charge point's
//! CALL for a durable action is answered only after its delivery succeeded.

pub mod embedded;
pub mod ring;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
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
