//! One task per connection: reads frames, answers the charge point's CALLs one at a time,
//! sends the gateway's own CALLs one at a time, pings, and closes cleanly.
//!
//! OCPP-J allows one outstanding CALL per direction. CALLs the charge point sends while one
//! is still being processed wait in a small queue (kept in order); when that queue is full
//! the session stops reading the socket, so a slow event sink slows the charge point down
//! through TCP instead of growing memory. The gateway's own CALLs wait in a bounded queue
//! behind the one in flight.

mod config;
mod handle;
mod handler;
mod rate;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, future::Future, pin::Pin, sync::Arc, time::Duration};

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use ocpp::{
    frame::{self, RpcError},
    ErrorCode, Frame, FrameErrorKind, MessageType, OcppVersion,
};
use serde_json::{json, value::RawValue};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{sleep_until, Instant},
};
use tokio_tungstenite::{
    tungstenite::{
        error::{CapacityError, ProtocolError},
        protocol::{frame::coding::CloseCode, CloseFrame},
        Error as WsError, Message,
    },
    WebSocketStream,
};
use tracing::{debug, info, warn, Instrument};

pub use config::SessionConfig;
pub use handle::{
    CallErrorInfo, CallOutcome, CloseRequest, ConnectionInfo, ErrorOrigin, PendingCallInfo,
    QueueMode, SessionHandle,
};
pub(crate) use handle::{OutboundCall, SessionEnd};
pub use handler::{CallReply, InboundCall, MessageHandler, ResponseVerdict};

use crate::{
    labels::{CallDirection, CallEnd, DisconnectReason, InvalidFrameKind},
    metrics::{action_label, InboundCallSeries, Metrics, OTHER},
    telemetry::debug_trace::{redact, DebugTraces},
};

/// What every session of a listener shares: its settings, the message handler, and
/// where it reports.
pub struct SessionContext<H> {
    /// The session settings.
    pub config: SessionConfig,
    /// Processes what charge points say.
    pub handler: Arc<H>,
    /// The traffic metrics.
    pub metrics: Arc<Metrics>,
    /// Charge points whose frames are logged.
    pub debug_traces: Arc<DebugTraces>,
}

/// The `invalid_frames_total{kind}` value of a decoding failure.
fn frame_error_kind(kind: &FrameErrorKind) -> InvalidFrameKind {
    match kind {
        FrameErrorKind::NotJson(_) => InvalidFrameKind::NotJson,
        FrameErrorKind::NotArray => InvalidFrameKind::NotArray,
        FrameErrorKind::BadMessageTypeId => InvalidFrameKind::BadMessageType,
        FrameErrorKind::UnsupportedMessageType(_) => InvalidFrameKind::UnsupportedMessageType,
        FrameErrorKind::BadMessageId => InvalidFrameKind::BadMessageId,
        FrameErrorKind::WrongLength { .. } => InvalidFrameKind::WrongLength,
        FrameErrorKind::BadField(_) => InvalidFrameKind::BadField,
    }
}

/// The span of one inbound CALL, when anything would use it: exported traces, or log
/// output at `debug` (where its fields label every line of the CALL). Otherwise lines
/// logged while the CALL is processed carry the session span's charge point and
/// connection, and name the message id themselves; creating, entering and closing a span
/// per CALL was a fifth of the CPU per CALL at the default level.
fn call_span(call: &InboundCall, info: &ConnectionInfo) -> Option<tracing::Span> {
    if !crate::telemetry::traces::exporting() && !tracing::enabled!(tracing::Level::DEBUG) {
        return None;
    }
    // Each CALL is a trace of its own (no session parent), with the ids that the session
    // span gives log lines. The attributes only traces use are recorded when the span is
    // exported: the log output formats every field of every span.
    let span = tracing::info_span!(
        parent: None,
        "ocpp.call",
        // The exporter reads name and kind when the span opens only.
        otel.name = %format_args!("ocpp {}", call.action),
        otel.kind = "server",
        rpc.system = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        ocpp.version = tracing::field::Empty,
        ocpp.message_id = %call.message_id,
        charge_point_id = %info.charge_point_id,
        connection_id = %info.connection_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if crate::telemetry::traces::record_ids(&span) {
        span.record("rpc.system", "ocpp");
        span.record("rpc.method", call.action.as_str());
        span.record("ocpp.version", info.version.subprotocol());
    }
    // A span nobody records would still be entered and left at every poll.
    (!span.is_disabled()).then_some(span)
}

/// How long the gateway waits for the peer's close frame after sending its own.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session ended, and the close code sent or received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndReason {
    /// Why (events, logs, metrics).
    pub reason: DisconnectReason,
    /// Close code sent or received.
    pub close_code: Option<u16>,
}

impl EndReason {
    /// The connection is gone without a close frame.
    const LOST: EndReason = EndReason {
        reason: DisconnectReason::ConnectionLost,
        close_code: None,
    };
}

struct PendingOutbound {
    message_id: String,
    action: String,
    action_label: &'static str,
    sent_at: std::time::Instant,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<CallOutcome>,
}

/// The charge point CALL being processed.
struct InFlight {
    message_id: String,
    series: Arc<InboundCallSeries>,
    received: std::time::Instant,
    reply: ReplyFuture,
}

type ReplyFuture = Pin<Box<dyn Future<Output = CallReply> + Send>>;

struct Session<S, H> {
    ws: WebSocketStream<S>,
    ctx: Arc<SessionContext<H>>,
    info: Arc<ConnectionInfo>,
    end: SessionEnd,
    /// CALLs waiting for the one in flight, each with its metric series.
    inbound_queue: VecDeque<(InboundCall, Arc<InboundCallSeries>)>,
    // Boxed: both are empty most of the time, and every byte of `Session` is paid by
    // every idle connection.
    in_flight: Option<Box<InFlight>>,
    outbound: Option<Box<PendingOutbound>>,
    consecutive_bad: u32,
    awaiting_pong_until: Option<Instant>,
}

/// Runs the session of an upgraded connection until it ends; every call still waiting
/// is answered `NotConnected` before it returns.
pub(crate) fn run<S, H>(
    ws: WebSocketStream<S>,
    ctx: Arc<SessionContext<H>>,
    info: Arc<ConnectionInfo>,
    end: SessionEnd,
) -> impl Future<Output = EndReason> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: MessageHandler,
{
    // Everything an idle connection keeps lives in the returned future or behind it. The
    // session goes to the heap, and this is not an `async fn`, so that the socket is not
    // also kept among a generator's captured arguments for the connection's whole life.
    let session = Box::new(Session {
        ws,
        ctx,
        info,
        end,
        inbound_queue: VecDeque::new(),
        in_flight: None,
        outbound: None,
        consecutive_bad: 0,
        awaiting_pong_until: None,
    });
    serve(session)
}

async fn serve<S, H>(mut session: Box<Session<S, H>>) -> EndReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: MessageHandler,
{
    let ended = session.run_loop().await;
    session.fail_pending_calls();
    ended
}

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: MessageHandler,
{
    fn version(&self) -> OcppVersion {
        self.info.version
    }

    async fn run_loop(&mut self) -> EndReason {
        let session_config = self.ctx.config.clone();
        let pings_on = !session_config.ping_interval.is_zero();
        let mut next_ping = Instant::now() + session_config.ping_interval;
        let mut paused_since_ping = false;
        let mut rate = rate::MessageRate::new(session_config.max_messages_per_second);
        let mut rate_paused = false;
        loop {
            let queue_has_room = self.inbound_queue.len() < session_config.inbound_queue_size;
            // Only asked while reading could go on: over its rate, a charge point is read
            // later (TCP slows it down), not buffered.
            let rate_wait = if queue_has_room {
                rate.ready_at()
            } else {
                None
            };
            if rate_wait.is_some() && !rate_paused {
                self.ctx.metrics.message_rate_pauses.inc();
            }
            rate_paused = rate_wait.is_some();
            let can_read = queue_has_room && !rate_paused;
            // While backpressure pauses reading, a pong may sit unread in the socket: the
            // pong deadline only counts time during which the session was reading.
            paused_since_ping |= !can_read;
            let outbound_deadline = self.outbound.as_ref().map(|o| o.deadline);
            let ping_deadline = self.awaiting_pong_until.unwrap_or(next_ping);
            let timer_deadline = [
                outbound_deadline,
                pings_on.then_some(ping_deadline),
                rate_wait,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(request) = self.end.close_request() {
                return Box::pin(self.close(request.reason)).await;
            }
            if self.outbound.is_none() {
                if let Some(call) = self.end.next_call() {
                    if let Err(ended) = Box::pin(self.send_call(call)).await {
                        return ended;
                    }
                    continue;
                }
            }
            let in_flight = &mut self.in_flight;
            tokio::select! {
                // A queued call or a close request: both are checked above.
                _ = self.end.woken() => {}
                reply = async { match in_flight { Some(call) => (&mut call.reply).await, None => std::future::pending().await } } => {
                    let Some(call) = self.in_flight.take() else { continue };
                    if let Some(reason) = reply.close {
                        return Box::pin(self.close(reason)).await;
                    }
                    let size = reply.frame.len();
                    if let Err(ended) = Box::pin(self.send_text(reply.frame)).await { return ended; }
                    self.count_reply(&call, reply.error, size);
                    if reply.bad_message {
                        if let Some(ended) = Box::pin(self.count_bad_message()).await { return ended; }
                    } else {
                        self.consecutive_bad = 0;
                    }
                    self.start_next_inbound();
                }
                message = self.ws.next(), if can_read => {
                    // Data frames count; control frames have their own defence (a pong is
                    // written before reading on, so a peer that pings without reading is
                    // stopped by TCP and dropped after the write timeout).
                    if matches!(message, Some(Ok(Message::Text(_) | Message::Binary(_)))) {
                        rate.take();
                    }
                    if let Some(ended) = Box::pin(self.on_message(message)).await { return ended; }
                }
                // One timer for every deadline: each Sleep is over a hundred bytes of every
                // idle connection's memory.
                _ = sleep_until(timer_deadline.unwrap_or_else(Instant::now)), if timer_deadline.is_some() => {
                    let now = Instant::now();
                    if outbound_deadline.is_some_and(|deadline| deadline <= now) {
                        if let Some(pending) = self.outbound.take() {
                            warn!(message_id = %pending.message_id, action = %pending.action, "gateway CALL timed out");
                            self.complete_outbound(*pending, CallOutcome::Timeout);
                        }
                    }
                    if !pings_on || ping_deadline > now {
                        continue;
                    }
                    if self.awaiting_pong_until.is_some() && paused_since_ping {
                        paused_since_ping = false;
                        self.awaiting_pong_until = Some(Instant::now() + session_config.pong_timeout);
                        continue;
                    }
                    if self.awaiting_pong_until.is_some() {
                        warn!("no pong within the deadline; closing dead connection");
                        return EndReason { reason: DisconnectReason::PingTimeout, close_code: None };
                    }
                    if let Err(ended) = self.send(Message::Ping(Default::default())).await { return ended; }
                    self.awaiting_pong_until = Some(Instant::now() + session_config.pong_timeout);
                    paused_since_ping = false;
                    next_ping = Instant::now() + session_config.ping_interval;
                }
            }
        }
    }

    async fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> Option<EndReason> {
        let message = match message {
            None => return Some(EndReason::LOST),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                warn!(size, max_size, "message over the size limit");
                self.ctx.metrics.invalid_frame(InvalidFrameKind::TooBig);
                return Some(self.close(DisconnectReason::MessageTooBig).await);
            }
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                return Some(EndReason::LOST)
            }
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                return Some(EndReason::LOST)
            }
            Some(Err(WsError::Protocol(e))) => {
                warn!(error = %e, "WebSocket protocol violation");
                return Some(self.close(DisconnectReason::WebsocketProtocolError).await);
            }
            // A text frame or a close reason that is not UTF-8: RFC 6455 7.1.7 and 8.1
            // require failing the connection with 1007.
            Some(Err(WsError::Utf8(e))) => {
                crate::warn_limited!(error = %e, "frame with invalid UTF-8");
                self.ctx
                    .metrics
                    .invalid_frame(InvalidFrameKind::InvalidUtf8);
                return Some(self.close(DisconnectReason::InvalidUtf8).await);
            }
            Some(Err(e)) => {
                debug!(error = %e, "connection failed");
                return Some(EndReason::LOST);
            }
        };
        self.info.touch();
        // Any traffic proves the peer alive; a pong is only the explicit proof.
        self.awaiting_pong_until = None;
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => {
                warn!("binary frame received; OCPP-J uses text frames only");
                self.ctx.metrics.invalid_frame(InvalidFrameKind::Binary);
                Some(self.close(DisconnectReason::BinaryFrame).await)
            }
            // tungstenite queued the pong; writing it out before reading on means a peer
            // that pings but never reads is read no further (TCP backpressure) and is
            // dropped after the write timeout, instead of piling up pongs in memory.
            Message::Ping(_) => self.flush().await.err(),
            Message::Pong(_) | Message::Frame(_) => None,
            Message::Close(frame) => {
                let close_code = frame.as_ref().map(|f| u16::from(f.code));
                // tungstenite queues the close reply; drive it out until the stream ends.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                    while let Some(Ok(_)) = self.ws.next().await {}
                })
                .await;
                Some(EndReason {
                    reason: DisconnectReason::ClosedByChargePoint,
                    close_code,
                })
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<EndReason> {
        let version = self.version();
        if self.ctx.debug_traces.is_on(&self.info.charge_point_id) {
            info!(direction = "in", frame = %redact(text), "debug trace");
        }
        let size = text.len();
        let frame = match Frame::decode(text, version) {
            Ok(frame) => frame,
            Err(error) => {
                self.ctx
                    .metrics
                    .invalid_frame(frame_error_kind(&error.kind));
                crate::warn_limited!(error = %error, message_type = ?error.message_type, "invalid frame");
                if error.warrants_reply() {
                    let reply = error.to_call_error(version);
                    self.count_error_sent(error.error_code(), OTHER, reply.len());
                    if let Err(ended) = self.send_text(reply).await {
                        return Some(ended);
                    }
                }
                return self.count_bad_message().await;
            }
        };
        let label = match &frame {
            Frame::Call { action, .. } | Frame::Send { action, .. } => {
                action_label(version, action)
            }
            Frame::CallResult { message_id, .. }
            | Frame::CallError(RpcError { message_id, .. }) => self
                .outbound
                .as_ref()
                .filter(|pending| pending.message_id == *message_id)
                .map_or(OTHER, |pending| pending.action_label),
            Frame::CallResultError(_) => OTHER,
        };
        // A CALL is counted through its series, which follows it to its answer.
        if !matches!(frame, Frame::Call { .. }) {
            self.ctx
                .metrics
                .received(version, frame.message_type(), label, size);
        }
        match frame {
            Frame::Call {
                message_id,
                action,
                payload,
            } => {
                let series = self.ctx.metrics.inbound_call(version, label);
                series.received(size);
                let duplicate = self
                    .in_flight
                    .as_ref()
                    .is_some_and(|call| call.message_id == message_id)
                    || self
                        .inbound_queue
                        .iter()
                        .any(|(c, _)| c.message_id == message_id);
                if duplicate {
                    warn!(%message_id, %action, "CALL reuses a message id that is still in flight");
                    self.ctx
                        .metrics
                        .invalid_frame(InvalidFrameKind::DuplicateMessageId);
                    let reply = frame::encode_call_error(
                        &message_id,
                        ErrorCode::RpcFrameworkError,
                        version,
                        "message id is already in use by a CALL still being processed",
                        &json!({}),
                    );
                    self.count_error_sent(ErrorCode::RpcFrameworkError, label, reply.len());
                    if let Err(ended) = self.send_text(reply).await {
                        return Some(ended);
                    }
                    // A retransmission while the first is processed (often under backpressure) is
                    // answered but not held against the charge point.
                    return None;
                }
                let call = InboundCall {
                    message_id,
                    action,
                    payload,
                    received: std::time::Instant::now(),
                };
                self.inbound_queue.push_back((call, series));
                self.start_next_inbound();
                None
            }
            Frame::CallResult {
                message_id,
                payload,
            } => self.on_call_result(message_id, payload).await,
            Frame::CallError(error) => {
                self.on_call_error(error).await;
                None
            }
            Frame::CallResultError(error) => {
                warn!(message_id = %error.message_id, code = %error.error_code, description = %error.description,
                    "charge point rejected a CALLRESULT of the gateway");
                self.ctx
                    .handler
                    .error(&self.info, MessageType::CallResultError, None, error)
                    .await;
                None
            }
            Frame::Send {
                message_id,
                action,
                payload,
            } => {
                self.ctx
                    .handler
                    .send(&self.info, message_id, action, payload)
                    .await;
                None
            }
        }
    }

    fn start_next_inbound(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        if let Some((call, series)) = self.inbound_queue.pop_front() {
            let message_id = call.message_id.clone();
            let received = call.received;
            let span = call_span(&call, &self.info);
            let future = self.ctx.handler.clone().call(self.info.clone(), call);
            let reply: ReplyFuture = match span {
                Some(span) => Box::pin(future.instrument(span)),
                None => future,
            };
            self.in_flight = Some(Box::new(InFlight {
                message_id,
                series,
                received,
                reply,
            }));
        }
    }

    async fn on_call_result(
        &mut self,
        message_id: String,
        payload: Box<RawValue>,
    ) -> Option<EndReason> {
        let pending = self.take_outbound(&message_id);
        if pending.is_none() {
            crate::warn_limited!(%message_id, "CALLRESULT for no pending CALL (late or unknown)");
            self.ctx.metrics.late_responses.inc();
        }
        let action = pending.as_ref().map(|pending| pending.action.as_str());
        let verdict = self
            .ctx
            .handler
            .response(&self.info, &message_id, action, payload)
            .await;
        let pending = pending?;
        if let Some(reply) = verdict.reply {
            let size = reply.len();
            if let Err(ended) = self.send_text(reply).await {
                self.complete_outbound(pending, CallOutcome::NotConnected);
                return Some(ended);
            }
            self.ctx.metrics.sent(
                self.version(),
                MessageType::CallResultError,
                pending.action_label,
                size,
            );
        }
        self.complete_outbound(pending, verdict.outcome);
        None
    }

    async fn on_call_error(&mut self, error: RpcError) {
        let pending = self.take_outbound(&error.message_id);
        if pending.is_none() {
            crate::warn_limited!(message_id = %error.message_id, "CALLERROR for no pending CALL (late or unknown)");
            self.ctx.metrics.late_responses.inc();
        }
        let action = pending.as_ref().map(|pending| pending.action.as_str());
        let info = self
            .ctx
            .handler
            .error(&self.info, MessageType::CallError, action, error)
            .await;
        if let Some(pending) = pending {
            self.complete_outbound(pending, CallOutcome::CallError(info));
        }
    }

    /// Hands a gateway CALL its outcome and records it.
    fn complete_outbound(&self, pending: PendingOutbound, outcome: CallOutcome) {
        self.info.set_pending_call(None);
        let metrics = &self.ctx.metrics;
        metrics.pending_calls.dec();
        let end = match &outcome {
            CallOutcome::Completed(_) => CallEnd::Completed,
            CallOutcome::CallError(error) => {
                if error.origin == ErrorOrigin::ChargePoint {
                    metrics.call_error(CallDirection::Outbound, &error.code);
                }
                CallEnd::CallError
            }
            CallOutcome::Timeout => CallEnd::Timeout,
            CallOutcome::NotConnected | CallOutcome::QueueFull | CallOutcome::Unroutable(_) => {
                CallEnd::NotConnected
            }
        };
        metrics.call_done(
            CallDirection::Outbound,
            pending.action_label,
            end,
            pending.sent_at.elapsed().as_secs_f64(),
        );
        let _ = pending.reply.send(outcome);
    }

    /// Records the answer to a charge point CALL once it is written.
    fn count_reply(&self, call: &InFlight, error: Option<ErrorCode>, size: usize) {
        if let Some(code) = error {
            self.ctx
                .metrics
                .call_error(CallDirection::Inbound, code.as_str(OcppVersion::V201));
        }
        let elapsed = call.received.elapsed().as_secs_f64();
        call.series.answered(error.is_some(), size, elapsed);
    }

    /// Records a CALLERROR the session itself sends (before any dispatch).
    fn count_error_sent(&self, code: ErrorCode, action: &'static str, size: usize) {
        let metrics = &self.ctx.metrics;
        metrics.call_error(CallDirection::Inbound, code.as_str(OcppVersion::V201));
        metrics.sent(self.version(), MessageType::CallError, action, size);
    }

    fn take_outbound(&mut self, message_id: &str) -> Option<PendingOutbound> {
        if self
            .outbound
            .as_ref()
            .is_some_and(|p| p.message_id == message_id)
        {
            self.outbound.take().map(|pending| *pending)
        } else {
            None
        }
    }

    async fn send_call(&mut self, call: Box<OutboundCall>) -> Result<(), EndReason> {
        if call.deadline <= Instant::now() {
            let _ = call.reply.send(CallOutcome::Timeout);
            return Ok(());
        }
        let message_id = uuid::Uuid::new_v4().to_string();
        let text = frame::encode_call(&message_id, &call.action, &call.payload);
        debug!(%message_id, action = %call.action, "sending CALL");
        self.info.set_pending_call(Some(PendingCallInfo {
            message_id: message_id.clone(),
            action: call.action.clone(),
            sent_at: Utc::now(),
        }));
        let OutboundCall {
            action,
            deadline,
            reply,
            ..
        } = *call;
        let action_label = action_label(self.version(), &action);
        let metrics = &self.ctx.metrics;
        metrics.sent(self.version(), MessageType::Call, action_label, text.len());
        metrics.pending_calls.inc();
        self.outbound = Some(Box::new(PendingOutbound {
            message_id,
            action,
            action_label,
            sent_at: std::time::Instant::now(),
            deadline,
            reply,
        }));
        self.send_text(text).await
    }

    async fn count_bad_message(&mut self) -> Option<EndReason> {
        self.consecutive_bad += 1;
        if self.consecutive_bad >= self.ctx.config.bad_message_limit {
            warn!(
                count = self.consecutive_bad,
                "too many consecutive bad messages; closing"
            );
            return Some(self.close(DisconnectReason::TooManyBadMessages).await);
        }
        None
    }

    async fn send_text(&mut self, text: String) -> Result<(), EndReason> {
        if self.ctx.debug_traces.is_on(&self.info.charge_point_id) {
            info!(direction = "out", frame = %redact(&text), "debug trace");
        }
        self.send(Message::text(text)).await
    }

    /// Writes one message. A peer that does not take it within the write timeout (it
    /// stopped reading) is gone: waiting longer would freeze the whole session.
    async fn send(&mut self, message: Message) -> Result<(), EndReason> {
        let timeout = self.write_timeout();
        Self::within_write_timeout(timeout, self.ws.send(message)).await
    }

    /// Writes out whatever tungstenite has queued (an automatic pong), within the write
    /// timeout.
    async fn flush(&mut self) -> Result<(), EndReason> {
        let timeout = self.write_timeout();
        Self::within_write_timeout(timeout, self.ws.flush()).await
    }

    async fn within_write_timeout(
        timeout: Duration,
        write: impl Future<Output = Result<(), WsError>>,
    ) -> Result<(), EndReason> {
        let lost = EndReason::LOST;
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                debug!(error = %e, "write failed");
                Err(lost)
            }
            Err(_) => {
                crate::warn_limited!("charge point stopped reading; connection dropped");
                Err(lost)
            }
        }
    }

    fn write_timeout(&self) -> Duration {
        self.ctx.config.pong_timeout.max(Duration::from_secs(1))
    }

    /// Sends the close frame of `reason` and waits briefly for the peer's.
    async fn close(&mut self, reason: DisconnectReason) -> EndReason {
        let code = reason.close_code().unwrap_or(1000);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.as_str().into(),
        };
        let sent = tokio::time::timeout(self.write_timeout(), self.ws.close(Some(frame))).await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                while let Some(Ok(_)) = self.ws.next().await {}
            })
            .await;
        }
        EndReason {
            reason,
            close_code: Some(code),
        }
    }

    /// Answers every call still waiting: the charge point is gone.
    fn fail_pending_calls(&mut self) {
        if let Some(pending) = self.outbound.take() {
            self.complete_outbound(*pending, CallOutcome::NotConnected);
        }
        for call in self.end.close_queue() {
            let _ = call.reply.send(CallOutcome::NotConnected);
        }
    }
}
