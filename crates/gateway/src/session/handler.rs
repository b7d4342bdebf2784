//! What a session hands on: the one interface between the connection (this module's
//! parent) and whatever processes messages (the gateway's pipeline; a stub in tests).

use std::{future::Future, sync::Arc};

use futures_util::future::BoxFuture;
use ocpp::{frame::RpcError, ErrorCode, MessageType};
use serde_json::value::RawValue;

use super::{CallErrorInfo, CallOutcome, ConnectionInfo};

/// A CALL read from the socket, waiting to be processed.
#[derive(Debug)]
pub struct InboundCall {
    /// The charge point's message id.
    pub message_id: String,
    /// The action.
    pub action: String,
    /// The payload exactly as received.
    pub payload: Box<RawValue>,
    /// When the frame was read.
    pub received: std::time::Instant,
}

/// The frame that answers a charge point's CALL.
#[derive(Debug)]
pub struct CallReply {
    /// The CALLRESULT or CALLERROR text frame.
    pub frame: String,
    /// Whether the CALL was malformed or invalid (counts toward the bad-message limit).
    pub bad_message: bool,
    /// The code, when the frame is a CALLERROR.
    pub error: Option<ErrorCode>,
    /// Close the connection for this reason instead of answering (`frame` is not sent).
    pub close: Option<crate::labels::DisconnectReason>,
}

/// What becomes of a charge point's CALLRESULT to the gateway's CALL.
#[derive(Debug)]
pub struct ResponseVerdict {
    /// What the CALL's caller learns.
    pub outcome: CallOutcome,
    /// A frame to send back first (a CALLRESULTERROR to a 2.1 charge point whose
    /// CALLRESULT failed validation).
    pub reply: Option<String>,
}

/// Processes what a charge point says. The session calls it in the order frames
/// arrive, one charge point CALL at a time, and writes whatever it returns.
pub trait MessageHandler: Send + Sync + 'static {
    /// A CALL from the charge point; the future resolves to its answer. It runs while
    /// the session goes on reading (and queueing further CALLs).
    fn call(
        self: Arc<Self>,
        info: Arc<ConnectionInfo>,
        call: InboundCall,
    ) -> BoxFuture<'static, CallReply>;

    /// A CALLRESULT. `action` is that of the gateway's pending CALL it answers; `None`
    /// for a response to no pending CALL (late or unknown), whose verdict is ignored.
    fn response(
        &self,
        info: &ConnectionInfo,
        message_id: &str,
        action: Option<&str>,
        payload: Box<RawValue>,
    ) -> impl Future<Output = ResponseVerdict> + Send;

    /// A CALLERROR (to the gateway's CALL of `action`, `None` when it matches none) or a
    /// CALLRESULTERROR (2.1: the charge point rejected a CALLRESULT of the gateway).
    /// Returns the error as the CALL's caller learns it.
    fn error(
        &self,
        info: &ConnectionInfo,
        message_type: MessageType,
        action: Option<&str>,
        error: RpcError,
    ) -> impl Future<Output = CallErrorInfo> + Send;

    /// A SEND (2.1: a message that is never answered).
    fn send(
        &self,
        info: &ConnectionInfo,
        message_id: String,
        action: String,
        payload: Box<RawValue>,
    ) -> impl Future<Output = ()> + Send;
}
