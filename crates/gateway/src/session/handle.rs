//! The session API: how the rest of the gateway talks to one charge point's connection.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use chrono::{DateTime, Utc};

use crate::labels::DisconnectReason;
use ocpp::OcppVersion;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::VecDeque;

use tokio::{
    sync::{oneshot, Semaphore, TryAcquireError},
    time::Instant,
};

/// What is known about one live connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The charge point id (percent-decoded).
    pub charge_point_id: String,
    /// Unique id of this connection (a reconnect gets a new one).
    pub connection_id: String,
    /// The negotiated OCPP version.
    pub version: OcppVersion,
    /// The peer's address.
    pub peer_address: SocketAddr,
    /// When the WebSocket handshake completed.
    pub connected_at: DateTime<Utc>,
    /// The serial number the charge point's BootNotification must carry: its client
    /// certificate's CN, when certificates are bound to serial numbers.
    pub bound_serial_number: Option<Box<str>>,
    /// The epoch of this connection's claim in the cluster registry; 0 until claimed (and
    /// always without a cluster).
    epoch: AtomicU64,
    last_message_at_ms: AtomicI64,
    pending_call: Mutex<Option<PendingCallInfo>>,
}

/// The gateway's CALL currently waiting for the charge point's response.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingCallInfo {
    /// The CALL's message id.
    pub message_id: String,
    /// The CALL's action.
    pub action: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
}

impl ConnectionInfo {
    /// Info for a connection that has just completed its handshake.
    pub fn new(charge_point_id: String, version: OcppVersion, peer_address: SocketAddr) -> Self {
        ConnectionInfo {
            charge_point_id,
            connection_id: uuid::Uuid::now_v7().to_string(),
            version,
            peer_address,
            connected_at: Utc::now(),
            bound_serial_number: None,
            epoch: AtomicU64::new(0),
            last_message_at_ms: AtomicI64::new(0),
            pending_call: Mutex::new(None),
        }
    }

    /// The same info, with the serial number its BootNotification must carry.
    pub fn with_bound_serial_number(mut self, serial_number: Option<String>) -> Self {
        self.bound_serial_number = serial_number.map(String::into_boxed_str);
        self
    }

    /// The epoch of this connection's registry claim (0: not claimed).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records the epoch the registry gave this connection.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// Records that a message arrived now.
    pub fn touch(&self) {
        self.last_message_at_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// When the last message arrived, if any has.
    pub fn last_message_at(&self) -> Option<DateTime<Utc>> {
        match self.last_message_at_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// The gateway's CALL in flight, if any.
    pub fn pending_call(&self) -> Option<PendingCallInfo> {
        self.pending_call.lock().clone()
    }

    pub(crate) fn set_pending_call(&self, pending: Option<PendingCallInfo>) {
        *self.pending_call.lock() = pending;
    }
}

/// How a gateway-initiated CALL ended.
#[derive(Debug, Clone)]
pub enum CallOutcome {
    /// The charge point answered with a valid CALLRESULT.
    Completed(Box<RawValue>),
    /// The charge point answered with a CALLERROR, or with a CALLRESULT that failed
    /// validation (then `origin` is [`ErrorOrigin::Gateway`]).
    CallError(CallErrorInfo),
    /// No response arrived in time.
    Timeout,
    /// The charge point is not connected (or disconnected before answering).
    NotConnected,
    /// The charge point's call queue is full; try again later.
    QueueFull,
    /// The charge point is not connected here and its owner in the cluster could not be
    /// reached or found: why (reported with the `notConnected` status).
    Unroutable(String),
}

impl CallOutcome {
    /// The outcome's name in API responses and command results.
    pub fn status(&self) -> &'static str {
        match self {
            CallOutcome::Completed(_) => "completed",
            CallOutcome::CallError(_) => "callError",
            CallOutcome::Timeout => "timeout",
            CallOutcome::NotConnected | CallOutcome::Unroutable(_) => "notConnected",
            CallOutcome::QueueFull => "queueFull",
        }
    }
}

/// Who produced a call error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorOrigin {
    /// The charge point sent a CALLERROR.
    ChargePoint,
    /// The gateway rejected the charge point's CALLRESULT (schema violation).
    Gateway,
}

/// A CALLERROR, or a response the gateway rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallErrorInfo {
    /// The error code.
    pub code: String,
    /// The description.
    pub description: String,
    /// The details object.
    pub details: serde_json::Value,
    /// Who produced the error.
    pub origin: ErrorOrigin,
}

/// A CALL waiting to be sent to the charge point.
pub(crate) struct OutboundCall {
    pub action: String,
    pub payload: Box<RawValue>,
    pub deadline: Instant,
    pub reply: oneshot::Sender<CallOutcome>,
}

/// Why the gateway closes a connection on its own initiative (the close code follows from
/// the reason).
#[derive(Debug, Clone, Copy)]
pub struct CloseRequest {
    /// Why: the close frame's reason text, and the `reason` of the `connection.closed` event.
    pub reason: DisconnectReason,
}

/// What a call does when the session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMode {
    /// Answer [`CallOutcome::QueueFull`] at once (interactive callers).
    FailFast,
    /// Wait for room within the call's timeout (the Kafka command consumer).
    Wait,
}

/// A cloneable handle to one live session.
#[derive(Clone)]
pub struct SessionHandle {
    /// The connection's details.
    pub info: Arc<ConnectionInfo>,
    mailbox: Arc<Mailbox>,
}

/// What a session's handles share with the session: the gateway CALLs waiting to be sent
/// and the close request.
///
/// One small allocation per connection: a bounded channel and a cancellation token cost
/// several times as much, and every idle connection paid for them.
struct Mailbox {
    calls: Mutex<VecDeque<Box<OutboundCall>>>,
    /// Free places in `calls`; closed (under the `calls` lock) once the session has ended.
    room: Semaphore,
    /// Set when a call was queued or a close requested, until the session looks.
    mail: AtomicBool,
    /// The session's task, woken when `mail` is set. One waiter only: cheaper than a
    /// `Notify`, whose waiter list the session joined and left on every loop.
    wake: AtomicWaker,
    close_request: Mutex<Option<CloseRequest>>,
}

impl Mailbox {
    /// Tells the session to look at its mailbox.
    fn notify(&self) {
        self.mail.store(true, Ordering::Release);
        self.wake.wake();
    }
}

/// The session's side of a [`SessionHandle`].
pub(crate) struct SessionEnd {
    mailbox: Arc<Mailbox>,
}

impl SessionEnd {
    /// The close requested through a handle, if any.
    pub fn close_request(&self) -> Option<CloseRequest> {
        *self.mailbox.close_request.lock()
    }

    /// The oldest queued call, if any; its place is free again.
    pub fn next_call(&self) -> Option<Box<OutboundCall>> {
        let call = self.mailbox.calls.lock().pop_front()?;
        self.mailbox.room.add_permits(1);
        Some(call)
    }

    /// Resolves when a handle queued a call or asked to close since the last wake. The
    /// session checks both after every wake, so a wake that finds nothing is harmless.
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| {
            // Registered before looking, so that mail arriving in between wakes it.
            self.mailbox.wake.register(cx.waker());
            if self.mailbox.mail.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Refuses further calls and returns the ones still queued.
    pub fn close_queue(&self) -> Vec<OutboundCall> {
        let mut calls = self.mailbox.calls.lock();
        self.mailbox.room.close();
        calls.drain(..).map(|call| *call).collect()
    }
}

impl SessionHandle {
    /// A handle and the session's end of it; `queue_size` calls may wait.
    pub(crate) fn new(info: Arc<ConnectionInfo>, queue_size: usize) -> (SessionHandle, SessionEnd) {
        let mailbox = Arc::new(Mailbox {
            calls: Mutex::new(VecDeque::new()),
            room: Semaphore::new(queue_size),
            mail: AtomicBool::new(false),
            wake: AtomicWaker::new(),
            close_request: Mutex::new(None),
        });
        (
            SessionHandle {
                info,
                mailbox: mailbox.clone(),
            },
            SessionEnd { mailbox },
        )
    }

    /// Sends a CALL to the charge point and waits for its outcome, at most `timeout`
    /// (counted from now, including time spent waiting behind earlier calls). With
    /// [`QueueMode::FailFast`] a full queue answers [`CallOutcome::QueueFull`] at once;
    /// with [`QueueMode::Wait`] the call waits for room within its timeout.
    ///
    /// The payload must already be valid for the connection's version.
    pub async fn call(
        &self,
        action: &str,
        payload: Box<RawValue>,
        timeout: Duration,
        mode: QueueMode,
    ) -> CallOutcome {
        let (reply, outcome) = oneshot::channel();
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let call = Box::new(OutboundCall {
            action: action.to_owned(),
            payload,
            // A timeout beyond the clock's range waits as long as it can.
            deadline,
            reply,
        });
        let permit = match mode {
            QueueMode::FailFast => match self.mailbox.room.try_acquire() {
                Ok(permit) => permit,
                Err(TryAcquireError::NoPermits) => return CallOutcome::QueueFull,
                Err(TryAcquireError::Closed) => return CallOutcome::NotConnected,
            },
            QueueMode::Wait => {
                match tokio::time::timeout(timeout, self.mailbox.room.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return CallOutcome::NotConnected,
                    Err(_elapsed) => return CallOutcome::Timeout,
                }
            }
        };
        {
            let mut calls = self.mailbox.calls.lock();
            // The session closes `room` under this lock before draining: a call pushed
            // here is either drained by it or seen closed now, never stranded.
            if self.mailbox.room.is_closed() {
                return CallOutcome::NotConnected;
            }
            permit.forget();
            calls.push_back(call);
        }
        self.mailbox.notify();
        // The session answers every call by its deadline; a dropped sender means the
        // session ended first. The outer bound guards against a session that cannot act.
        match tokio::time::timeout_at(deadline + Duration::from_secs(1), outcome).await {
            Ok(outcome) => outcome.unwrap_or(CallOutcome::NotConnected),
            Err(_) => CallOutcome::Timeout,
        }
    }

    /// How many calls wait behind the one in flight.
    pub fn queued_calls(&self) -> usize {
        self.mailbox.calls.lock().len()
    }

    /// The connection as the admin API lists it, held by `node`.
    pub fn describe(&self, node: &str) -> serde_json::Value {
        let info = &self.info;
        let mut summary = serde_json::json!({
            "chargePointId": info.charge_point_id,
            "connectionId": info.connection_id,
            "ocppVersion": info.version,
            "peerAddress": info.peer_address.to_string(),
            "connectedSince": info.connected_at,
            "lastMessageAt": info.last_message_at(),
            "pendingCall": info.pending_call(),
            "queuedCalls": self.queued_calls(),
            "gatewayNode": node,
        });
        if info.epoch() != 0 {
            summary["epoch"] = info.epoch().into();
        }
        summary
    }

    /// Asks the session to close for `reason` (with its close code); returns at once.
    pub fn close(&self, reason: DisconnectReason) {
        let mut request = self.mailbox.close_request.lock();
        if request.is_none() {
            *request = Some(CloseRequest { reason });
        }
        drop(request);
        self.mailbox.notify();
    }
}
