//! The message pipeline: what happens to everything a charge point says, and to its
//! connection opening and closing. Every direction passes here — CALL, CALLRESULT,
//! CALLERROR, CALLRESULTERROR, SEND, opened, closed — and this is where messages are
//! validated ([`crate::validation`]), turned into events ([`Publisher`]), answered (by
//! the backend through [`crate::backend::ReplyRouter`], or by the [`LocalResponder`]),
//! and where an answer waits for its event to be durable.
//!
//! The session (`crate::session`) owns the socket and calls in through
//! [`MessageHandler`]; this module never sees a socket.

use std::{collections::HashSet, sync::Arc};

use chrono::Utc;
use futures_util::{future::BoxFuture, FutureExt};
use ocpp::{frame::RpcError, ErrorCode, MessageType, OcppVersion};
use serde_json::{json, value::RawValue, Value};
use tracing::{debug, info, warn};

pub use crate::sink::publisher::Publisher;

use crate::{
    backend::{config::BackendConfig, config::ReplyFallback, Reply, ReplyRouter},
    event::{
        ClosedData, EventData, MessageData, OpenedData, CONNECTION_CLOSED, CONNECTION_OPENED,
        MESSAGE_RECEIVED,
    },
    labels::{DisconnectReason, SecurityEventKind, SecurityProfile},
    metrics::{action_label, ActionLabels, Metrics, ReasonLabels, VersionLabels},
    responder::LocalResponder,
    security_events::SecurityEvents,
    session::{
        CallErrorInfo, CallOutcome, CallReply, ConnectionInfo, EndReason, ErrorOrigin, InboundCall,
        MessageHandler, ResponseVerdict,
    },
    validation::{CallRejection, Validator},
};

/// The charge point CALLs a backend answers, and how to wait for it.
pub struct BackendAnswers {
    replies: Arc<ReplyRouter>,
    actions: HashSet<String>,
    config: BackendConfig,
}

impl BackendAnswers {
    /// The actions of `config`, answered through `replies`.
    pub fn new(replies: Arc<ReplyRouter>, config: BackendConfig) -> BackendAnswers {
        BackendAnswers {
            replies,
            actions: config.actions.iter().cloned().collect(),
            config,
        }
    }
}

/// Everything between a session and the rest of the gateway.
pub struct Pipeline {
    validator: Arc<Validator>,
    responder: LocalResponder,
    events: Publisher,
    metrics: Arc<Metrics>,
    durable_actions: HashSet<String>,
    backend: Option<BackendAnswers>,
    security: Option<Arc<SecurityEvents>>,
}

impl Pipeline {
    /// A pipeline that checks with `validator`, publishes through `events`, and answers
    /// CALLs with `backend` where it answers them, with `responder` otherwise. The CALLs
    /// of `durable_actions` are answered only once their event is durable.
    pub fn new(
        validator: Arc<Validator>,
        responder: LocalResponder,
        events: Publisher,
        metrics: Arc<Metrics>,
        durable_actions: &[String],
        backend: Option<BackendAnswers>,
    ) -> Pipeline {
        Pipeline {
            validator,
            responder,
            events,
            metrics,
            durable_actions: durable_actions.iter().cloned().collect(),
            backend,
            security: None,
        }
    }

    /// The same pipeline, reporting security events (a BootNotification whose serial
    /// number is not its certificate's) through `security`.
    pub fn with_security_events(mut self, security: Arc<SecurityEvents>) -> Pipeline {
        self.security = Some(security);
        self
    }

    /// A charge point connected: counted, logged and published.
    ///
    /// Boxed here, not by the caller: the connection's future lives as long as the
    /// connection, and would otherwise keep room for this one's state all that time.
    pub fn opened(&self, info: Arc<ConnectionInfo>, fallback: bool) -> BoxFuture<'_, ()> {
        async move { self.on_opened(&info, fallback).await }.boxed()
    }

    /// A charge point's connection ended (and it is no longer registered): counted,
    /// logged and published. Boxed for the same reason as [`Pipeline::opened`].
    pub fn closed(&self, info: Arc<ConnectionInfo>, ended: EndReason) -> BoxFuture<'_, ()> {
        async move { self.on_closed(&info, ended).await }.boxed()
    }

    async fn on_opened(&self, info: &ConnectionInfo, fallback: bool) {
        let opened = OpenedData {
            ocpp_version: info.version,
            subprotocol_fallback: fallback,
            peer_address: info.peer_address,
            connection_id: info.connection_id.clone(),
            gateway_node: self.events.node_id().to_owned(),
            epoch: Some(info.epoch()).filter(|epoch| *epoch != 0),
        };
        self.events
            .publish_quietly(
                CONNECTION_OPENED,
                &info.charge_point_id,
                EventData::Opened(opened),
            )
            .await;
        info!(version = %info.version, peer = %info.peer_address, fallback, "charge point connected");
        self.metrics
            .connections
            .get_or_create(&VersionLabels {
                ocpp_version: info.version.subprotocol(),
            })
            .inc();
    }

    async fn on_closed(&self, info: &ConnectionInfo, ended: EndReason) {
        let duration = (Utc::now() - info.connected_at).num_milliseconds() as f64 / 1000.0;
        self.metrics
            .connections
            .get_or_create(&VersionLabels {
                ocpp_version: info.version.subprotocol(),
            })
            .dec();
        self.metrics
            .disconnects
            .get_or_create(&ReasonLabels {
                reason: ended.reason.as_str(),
            })
            .inc();
        self.metrics.connection_duration.observe(duration);
        info!(reason = ended.reason.as_str(), close_code = ?ended.close_code, duration_seconds = duration, "charge point disconnected");
        let closed = ClosedData {
            ocpp_version: info.version,
            reason: ended.reason.as_str(),
            close_code: ended.close_code,
            duration_seconds: duration,
            connection_id: info.connection_id.clone(),
            gateway_node: self.events.node_id().to_owned(),
            epoch: Some(info.epoch()).filter(|epoch| *epoch != 0),
        };
        self.events
            .publish_quietly(
                CONNECTION_CLOSED,
                &info.charge_point_id,
                EventData::Closed(closed),
            )
            .await;
    }

    /// With certificates bound to serial numbers (OCPP 2.0.1 B01.FR.12), a BootNotification
    /// must carry the serial number the certificate names: otherwise the connection is
    /// closed (1008) instead of answered, and a security event says why.
    fn check_serial_number(&self, info: &ConnectionInfo, payload: &RawValue) -> Option<CallReply> {
        let expected = info.bound_serial_number.as_deref()?;
        let sent = boot_serial_number(info.version, payload);
        if sent.as_deref() == Some(expected) {
            return None;
        }
        crate::warn_limited!(charge_point_id = %info.charge_point_id, certificate = %expected, serial_number = ?sent, "BootNotification serial number is not the certificate's; closing");
        if let Some(security) = &self.security {
            security.report(
                SecurityEventKind::CertificateRefused,
                &info.charge_point_id,
                info.peer_address.ip(),
                "serial_number_mismatch",
                Some(SecurityProfile::TlsClientCertificate),
            );
        }
        Some(CallReply {
            frame: String::new(),
            bad_message: false,
            error: None,
            close: Some(DisconnectReason::SerialNumberMismatch),
        })
    }

    /// Whether `action` is answered by the backend.
    fn backend_for(&self, action: &str) -> Option<&BackendAnswers> {
        self.backend
            .as_ref()
            .filter(|backend| backend.actions.contains(action))
    }

    /// Processes one CALL and returns the frame that answers it.
    async fn handle_call(
        self: Arc<Self>,
        info: Arc<ConnectionInfo>,
        call: InboundCall,
    ) -> CallReply {
        let version = info.version;
        let InboundCall {
            message_id,
            action,
            payload,
            received,
        } = call;
        let checked = match self.validator.charge_point_call(version, &action, &payload) {
            Ok(checked) => checked,
            Err(rejection) => {
                if rejection.bad_message {
                    crate::warn_limited!(%message_id, %action, error = %rejection.description, "CALL payload failed validation");
                } else {
                    debug!(%message_id, %action, error = %rejection.description, "CALL not served");
                }
                return rejection_reply(&message_id, version, rejection);
            }
        };
        if action == "BootNotification" {
            if let Some(refused) = self.check_serial_number(&info, &payload) {
                return refused;
            }
        }
        if checked.timestamps_without_zone > 0 {
            self.metrics
                .timestamps_without_zone
                .get_or_create(&VersionLabels {
                    ocpp_version: version.subprotocol(),
                })
                .inc_by(u64::from(checked.timestamps_without_zone));
        }

        let backend = self.backend_for(&action);
        // Registered before the event is published, so that a fast reply cannot be missed.
        let reply_wait =
            backend.map(|backend| backend.replies.expect(&info.charge_point_id, &message_id));

        let mut data = MessageData::new(
            version,
            MessageType::Call,
            &message_id,
            Some(action.clone()),
            &info.connection_id,
            self.events.node(),
        );
        data.payload = Some(payload);
        let durable = self.durable_actions.contains(&action);
        // The backend can only answer what reached it: a backend-answered CALL waits too.
        let must_land = durable || reply_wait.is_some();
        let delivered = match self
            .events
            .publish(
                MESSAGE_RECEIVED,
                &info.charge_point_id,
                EventData::Message(data),
            )
            .await
        {
            Ok(delivery) if must_land => delivery.await.inspect(|()| {
                self.metrics
                    .ingest_duration
                    .get_or_create(&ActionLabels {
                        action: action_label(version, &action),
                    })
                    .observe(
                        received.elapsed().as_secs_f64(),
                        crate::telemetry::traces::trace_id(&tracing::Span::current())
                            .map(|trace_id| crate::metrics::TraceLabels { trace_id }),
                        None,
                    );
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = &delivered {
            crate::warn_limited!(%message_id, %action, error = %e, durable, "event not stored");
            if durable {
                return CallReply::refusal(
                    &message_id,
                    version,
                    ErrorCode::InternalError,
                    "the event could not be stored; retry later",
                );
            }
        }

        if let (Some(wait), Some(backend)) = (reply_wait, backend) {
            let reply = match delivered {
                Ok(()) => wait.wait(backend.config.reply_timeout).await,
                Err(_) => None,
            };
            match self.backend_answer(version, &action, &message_id, reply) {
                Some(reply) => return reply,
                None => {
                    if backend.config.fallback_for(&action) == ReplyFallback::Error {
                        return CallReply::refusal(
                            &message_id,
                            version,
                            ErrorCode::InternalError,
                            "the backend did not answer in time; retry later",
                        );
                    }
                    debug!(%message_id, %action, "backend did not answer; local answer instead");
                }
            }
        }
        match self.responder.answer(version, &action, &checked.request) {
            Ok(response) => CallReply::result(&message_id, version, &response),
            Err(refusal) => {
                CallReply::refusal(&message_id, version, refusal.code, &refusal.description)
            }
        }
    }

    /// The CALLRESULT or CALLERROR for a backend reply; `None` when there is no usable one
    /// (none arrived in time, or its payload fails the response schema).
    fn backend_answer(
        &self,
        version: OcppVersion,
        action: &str,
        message_id: &str,
        reply: Option<Reply>,
    ) -> Option<CallReply> {
        match reply? {
            Reply::Payload(payload) => {
                match self.validator.backend_reply(version, action, &payload) {
                    Ok(()) => Some(CallReply::result(message_id, version, &payload)),
                    Err(error) => {
                        warn!(%message_id, %action, %error, "backend reply fails the response schema; not sent");
                        None
                    }
                }
            }
            Reply::Error {
                code,
                description,
                details,
            } => {
                let code = ErrorCode::parse(&code).unwrap_or(ErrorCode::GenericError);
                Some(CallReply {
                    frame: ocpp::frame::encode_call_error(
                        message_id,
                        code,
                        version,
                        &description,
                        &details,
                    ),
                    bad_message: false,
                    error: Some(code),
                    close: None,
                })
            }
        }
    }

    /// Publishes a message a charge point sent that nobody answers.
    async fn record(&self, info: &ConnectionInfo, data: MessageData) {
        self.events
            .publish_quietly(
                MESSAGE_RECEIVED,
                &info.charge_point_id,
                EventData::Message(data),
            )
            .await;
    }
}

impl MessageHandler for Pipeline {
    fn call(
        self: Arc<Self>,
        info: Arc<ConnectionInfo>,
        call: InboundCall,
    ) -> BoxFuture<'static, CallReply> {
        self.handle_call(info, call).boxed()
    }

    async fn response(
        &self,
        info: &ConnectionInfo,
        message_id: &str,
        action: Option<&str>,
        payload: Box<RawValue>,
    ) -> ResponseVerdict {
        let version = info.version;
        let checked = action.map(|action| {
            self.validator
                .charge_point_response(version, action, &payload)
        });
        let mut data = MessageData::new(
            version,
            MessageType::CallResult,
            message_id,
            action.map(str::to_owned),
            &info.connection_id,
            self.events.node(),
        );
        let verdict = match checked {
            None | Some(Ok(())) => ResponseVerdict {
                outcome: CallOutcome::Completed(payload.clone()),
                reply: None,
            },
            Some(Err(rejection)) => {
                warn!(%message_id, action = action.unwrap_or_default(), error = %rejection.description, "CALLRESULT failed validation");
                // OCPP 2.1 answers a CALLRESULT it cannot accept; earlier versions have
                // no frame for it.
                let reply = (version == OcppVersion::V21).then(|| {
                    ocpp::frame::encode_call_result_error(
                        message_id,
                        rejection.code,
                        &rejection.description,
                        &rejection.details,
                    )
                });
                ResponseVerdict {
                    outcome: CallOutcome::CallError(CallErrorInfo {
                        code: rejection.code.as_str(version).to_owned(),
                        description: rejection.description,
                        details: rejection.details,
                        origin: ErrorOrigin::Gateway,
                    }),
                    reply,
                }
            }
        };
        data.payload = Some(payload);
        self.record(info, data).await;
        verdict
    }

    async fn error(
        &self,
        info: &ConnectionInfo,
        message_type: MessageType,
        action: Option<&str>,
        error: RpcError,
    ) -> CallErrorInfo {
        if message_type == MessageType::CallResultError {
            warn!(message_id = %error.message_id, code = %error.error_code, description = %error.description,
                "charge point rejected a CALLRESULT of the gateway");
        }
        let caller_sees = CallErrorInfo {
            code: error.error_code.clone(),
            description: error.description.clone(),
            details: serde_json::from_str(error.details.get()).unwrap_or_else(|_| json!({})),
            origin: ErrorOrigin::ChargePoint,
        };
        let mut data = MessageData::new(
            info.version,
            message_type,
            &error.message_id,
            action.map(str::to_owned),
            &info.connection_id,
            self.events.node(),
        );
        data.error_code = Some(error.error_code);
        data.error_description = Some(error.description);
        data.error_details = Some(error.details);
        self.record(info, data).await;
        caller_sees
    }

    async fn send(
        &self,
        info: &ConnectionInfo,
        message_id: String,
        action: String,
        payload: Box<RawValue>,
    ) {
        if let Err(error) = self
            .validator
            .charge_point_send(info.version, &action, &payload)
        {
            warn!(%message_id, %action, %error, "SEND not recorded");
            return;
        }
        let mut data = MessageData::new(
            info.version,
            MessageType::Send,
            &message_id,
            Some(action),
            &info.connection_id,
            self.events.node(),
        );
        data.payload = Some(payload);
        self.record(info, data).await;
    }
}

impl CallReply {
    /// A CALLERROR for a well-formed CALL the gateway cannot serve (not the sender's
    /// fault in a way that should count toward closing the connection).
    fn refusal(
        message_id: &str,
        version: OcppVersion,
        code: ErrorCode,
        description: &str,
    ) -> CallReply {
        CallReply {
            frame: ocpp::frame::encode_call_error(
                message_id,
                code,
                version,
                description,
                &json!({}),
            ),
            bad_message: false,
            error: Some(code),
            close: None,
        }
    }

    /// The CALLRESULT carrying `response`.
    fn result(message_id: &str, version: OcppVersion, response: &Value) -> CallReply {
        // Serialised straight into the frame: `[3, id, payload]` is what encode_call_result
        // writes, without a round trip through a RawValue (which parses its input again).
        match serde_json::to_string(&(MessageType::CallResult.number(), message_id, response)) {
            Ok(frame) => CallReply {
                frame,
                bad_message: false,
                error: None,
                close: None,
            },
            Err(e) => CallReply::refusal(
                message_id,
                version,
                ErrorCode::InternalError,
                &e.to_string(),
            ),
        }
    }
}

/// The serial number a BootNotification carries: 1.6 `chargePointSerialNumber`, 2.x
/// `chargingStation.serialNumber`.
fn boot_serial_number(version: OcppVersion, payload: &RawValue) -> Option<String> {
    let payload: Value = serde_json::from_str(payload.get()).ok()?;
    let serial = match version {
        OcppVersion::V16 => &payload["chargePointSerialNumber"],
        OcppVersion::V201 | OcppVersion::V21 => &payload["chargingStation"]["serialNumber"],
    };
    serial.as_str().map(str::to_owned)
}

/// The CALLERROR of a CALL that failed its checks.
fn rejection_reply(message_id: &str, version: OcppVersion, rejection: CallRejection) -> CallReply {
    CallReply {
        frame: ocpp::frame::encode_call_error(
            message_id,
            rejection.code,
            version,
            &rejection.description,
            &rejection.details,
        ),
        bad_message: rejection.bad_message,
        error: Some(rejection.code),
        close: None,
    }
}
