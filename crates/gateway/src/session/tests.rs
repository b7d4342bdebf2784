//! The session over an in-memory socket (`tokio::io::duplex`), with a handler whose
//! answers the test releases one by one. Time is paused: a wait that can only end by a
//! timer ends as soon as every task is idle, so the timeouts below are exact, not raced.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::{io::DuplexStream, sync::Semaphore, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{protocol::Role, Message},
    WebSocketStream,
};

use super::*;
use crate::metrics::MetricsRegistry;

/// Answers each CALL with `{"action": ..., "echo": <request>}` once the test adds a
/// permit; records what it was handed, in order.
struct Scripted {
    answers: Semaphore,
    started: Mutex<Vec<String>>,
    responses: Mutex<Vec<(String, Option<String>)>>,
}

impl Default for Scripted {
    fn default() -> Self {
        Scripted {
            answers: Semaphore::new(0),
            started: Mutex::default(),
            responses: Mutex::default(),
        }
    }
}

impl MessageHandler for Scripted {
    fn call(
        self: Arc<Self>,
        _info: Arc<ConnectionInfo>,
        call: InboundCall,
    ) -> futures_util::future::BoxFuture<'static, CallReply> {
        self.started.lock().push(call.message_id.clone());
        Box::pin(async move {
            self.answers.acquire().await.expect("open").forget();
            CallReply {
                frame: json!([3, call.message_id, {"action": call.action, "echo": call.payload}])
                    .to_string(),
                bad_message: false,
                error: None,
                close: None,
            }
        })
    }

    async fn response(
        &self,
        _info: &ConnectionInfo,
        message_id: &str,
        action: Option<&str>,
        payload: Box<RawValue>,
    ) -> ResponseVerdict {
        self.responses
            .lock()
            .push((message_id.to_owned(), action.map(str::to_owned)));
        ResponseVerdict {
            outcome: CallOutcome::Completed(payload),
            reply: None,
        }
    }

    async fn error(
        &self,
        _info: &ConnectionInfo,
        _message_type: MessageType,
        _action: Option<&str>,
        error: RpcError,
    ) -> CallErrorInfo {
        CallErrorInfo {
            code: error.error_code,
            description: error.description,
            details: json!({}),
            origin: ErrorOrigin::ChargePoint,
        }
    }

    async fn send(&self, _: &ConnectionInfo, _: String, _: String, _: Box<RawValue>) {}
}

struct Harness {
    client: WebSocketStream<DuplexStream>,
    handler: Arc<Scripted>,
    handle: SessionHandle,
    session: JoinHandle<EndReason>,
}

fn settings() -> SessionConfig {
    SessionConfig {
        ping_interval: Duration::ZERO,
        ..SessionConfig::default()
    }
}

/// A session over a duplex pipe of `buffer` bytes each way.
async fn start(config: SessionConfig, buffer: usize) -> Harness {
    let (client, server) = tokio::io::duplex(buffer);
    let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let handler = Arc::new(Scripted::default());
    let ctx = Arc::new(SessionContext {
        config,
        handler: handler.clone(),
        metrics: Metrics::register(&mut MetricsRegistry::new(), &OcppVersion::ALL),
        debug_traces: Default::default(),
    });
    let info = Arc::new(ConnectionInfo::new(
        "CP-1".into(),
        OcppVersion::V16,
        ([127, 0, 0, 1], 1).into(),
    ));
    let (handle, end) = SessionHandle::new(info.clone(), ctx.config.call_queue_size);
    let session = tokio::spawn(run(server, ctx, info, end));
    Harness {
        client,
        handler,
        handle,
        session,
    }
}

fn call(id: &str, action: &str) -> Message {
    Message::text(json!([2, id, action, {}]).to_string())
}

async fn next_json(client: &mut WebSocketStream<DuplexStream>) -> Value {
    loop {
        match client.next().await.expect("open").expect("frame") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The close frame the session sends, past any other frame.
async fn close_frame(
    client: &mut WebSocketStream<DuplexStream>,
) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    loop {
        match client.next().await.expect("open").expect("frame") {
            Message::Close(frame) => return frame.expect("close frame"),
            _ => continue,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn calls_are_processed_one_at_a_time_and_answered_in_order() {
    let mut h = start(settings(), 64 * 1024).await;
    for id in ["a", "b", "c"] {
        h.client.send(call(id, "Heartbeat")).await.unwrap();
    }
    // Nothing is answered yet, so only the first CALL may have been handed on. (With
    // time paused, this sleep ends only once every task is idle.)
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(*h.handler.started.lock(), ["a"]);
    h.handler.answers.add_permits(3);
    for id in ["a", "b", "c"] {
        let answer = next_json(&mut h.client).await;
        assert_eq!(answer, json!([3, id, {"action": "Heartbeat", "echo": {}}]));
    }
    assert_eq!(*h.handler.started.lock(), ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_inbound_queue_stops_reading_until_calls_are_answered() {
    let config = SessionConfig {
        inbound_queue_size: 2,
        ..settings()
    };
    let mut h = start(config, 4096).await;
    let padding = "x".repeat(1000);
    let frames: Vec<Message> = (0..100)
        .map(|i| {
            Message::text(
                json!([2, format!("m{i}"), "DataTransfer", {"data": padding}]).to_string(),
            )
        })
        .collect();
    // With the queue full the session reads no further, so the pipe fills and the
    // client cannot write everything: the wait ends only by its timeout.
    let mut sending = futures_util::stream::iter(frames.into_iter().map(Ok));
    let blocked =
        tokio::time::timeout(Duration::from_secs(30), h.client.send_all(&mut sending)).await;
    assert!(
        blocked.is_err(),
        "the session kept reading with a full queue"
    );
    assert_eq!(h.handler.started.lock().len(), 1);
    // Answering lets everything through, in order, with nothing lost.
    h.handler.answers.add_permits(100);
    let (mut sink, mut stream) = h.client.split();
    let writer = tokio::spawn(async move { sink.send_all(&mut sending).await.unwrap() });
    for i in 0..100 {
        let answer = loop {
            match stream.next().await.expect("open").expect("frame") {
                Message::Text(text) => break serde_json::from_str::<Value>(text.as_str()).unwrap(),
                _ => continue,
            }
        };
        assert_eq!(answer[1], format!("m{i}"));
    }
    writer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_dropped_after_the_write_timeout() {
    let h = start(settings(), 4096).await;
    h.handler.answers.add_permits(1000);
    let padding = "x".repeat(2000);
    // Every answer echoes 2 KB back, and the client never reads them: the pipe fills and
    // the session's write cannot complete.
    let (mut sink, _never_read) = h.client.split();
    let writer = tokio::spawn(async move {
        for i in 0..100 {
            let frame = json!([2, format!("m{i}"), "DataTransfer", {"data": padding}]);
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
        }
    });
    let ended = tokio::time::timeout(Duration::from_secs(60), h.session)
        .await
        .expect("the session ends by the write timeout")
        .unwrap();
    assert_eq!(ended, EndReason::LOST);
    assert!(h.handler.started.lock().len() < 100);
    writer.abort();
}

#[tokio::test(start_paused = true)]
async fn a_close_request_sends_its_reasons_code() {
    let mut h = start(settings(), 64 * 1024).await;
    h.handle.close(DisconnectReason::DisconnectedByOperator);
    let close = close_frame(&mut h.client).await;
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason.as_str(), "disconnected_by_operator");
    let ended = h.session.await.unwrap();
    assert_eq!(ended.reason, DisconnectReason::DisconnectedByOperator);
    assert_eq!(ended.close_code, Some(1000));
}

#[tokio::test(start_paused = true)]
async fn a_binary_frame_is_closed_with_1003() {
    let mut h = start(settings(), 64 * 1024).await;
    h.client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let close = close_frame(&mut h.client).await;
    assert_eq!(u16::from(close.code), 1003);
    assert_eq!(
        h.session.await.unwrap().reason,
        DisconnectReason::BinaryFrame
    );
}

#[tokio::test(start_paused = true)]
async fn repeated_bad_frames_close_with_1008() {
    let config = SessionConfig {
        bad_message_limit: 3,
        ..settings()
    };
    let mut h = start(config, 64 * 1024).await;
    for _ in 0..3 {
        h.client.send(Message::text("not json")).await.unwrap();
    }
    let close = close_frame(&mut h.client).await;
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(
        h.session.await.unwrap().reason,
        DisconnectReason::TooManyBadMessages
    );
}

#[tokio::test(start_paused = true)]
async fn a_gateway_call_gets_the_charge_points_answer_and_a_late_one_is_still_handed_on() {
    let mut h = start(settings(), 64 * 1024).await;
    let handle = h.handle.clone();
    let payload = RawValue::from_string("{}".into()).unwrap();
    let outcome = tokio::spawn(async move {
        handle
            .call(
                "ClearCache",
                payload,
                Duration::from_secs(5),
                QueueMode::FailFast,
            )
            .await
    });
    let sent = next_json(&mut h.client).await;
    assert_eq!(sent[0], 2);
    assert_eq!(sent[2], "ClearCache");
    let id = sent[1].as_str().unwrap().to_owned();
    h.client
        .send(Message::text(
            json!([3, id, {"status": "Accepted"}]).to_string(),
        ))
        .await
        .unwrap();
    match outcome.await.unwrap() {
        CallOutcome::Completed(payload) => assert_eq!(payload.get(), r#"{"status":"Accepted"}"#),
        other => panic!("{other:?}"),
    }
    h.client
        .send(Message::text(json!([3, "stale", {}]).to_string()))
        .await
        .unwrap();
    // Frames are handled in order: once a later CALL is answered, the stale one was seen.
    h.handler.answers.add_permits(1);
    h.client.send(call("after", "Heartbeat")).await.unwrap();
    assert_eq!(next_json(&mut h.client).await[1], "after");
    h.handle.close(DisconnectReason::DisconnectedByOperator);
    h.session.await.unwrap();
    assert_eq!(
        *h.handler.responses.lock(),
        [
            (id, Some("ClearCache".to_owned())),
            ("stale".to_owned(), None)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_reusing_an_id_in_flight_is_refused_without_being_handed_on() {
    let mut h = start(settings(), 64 * 1024).await;
    h.client.send(call("same", "Heartbeat")).await.unwrap();
    h.client.send(call("same", "Heartbeat")).await.unwrap();
    let refused = next_json(&mut h.client).await;
    assert_eq!(refused[0], 4);
    // RpcFrameworkError, as OCPP 1.6 spells it.
    assert_eq!(refused[2], "ProtocolError");
    h.handler.answers.add_permits(1);
    assert_eq!(next_json(&mut h.client).await[0], 3);
    assert_eq!(*h.handler.started.lock(), ["same"]);
}

#[tokio::test(start_paused = true)]
async fn a_charge_point_over_its_message_rate_is_read_later_not_refused() {
    let config = SessionConfig {
        max_messages_per_second: 2,
        ..settings()
    };
    let mut h = start(config, 64 * 1024).await;
    h.handler.answers.add_permits(6);
    let started = tokio::time::Instant::now();
    for i in 0..6 {
        h.client
            .send(call(&format!("m{i}"), "Heartbeat"))
            .await
            .unwrap();
    }
    for i in 0..6 {
        assert_eq!(next_json(&mut h.client).await[1], format!("m{i}"));
    }
    // Two at once, then one every half second: the sixth is read two seconds in.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1990) && elapsed < Duration::from_millis(2100),
        "{elapsed:?}"
    );
}
