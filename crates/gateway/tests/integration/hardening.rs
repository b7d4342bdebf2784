//! Defects found by probing the release binary from outside: each test here failed before
//! its fix. Real listeners on 127.0.0.1:0, raw TCP where a well-behaved client library
//! would refuse to misbehave.

use gateway_testkit as common;

use std::time::Duration;

use common::{TestGateway, STEP};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{
    protocol::frame::{
        coding::{Control, Data, OpCode},
        Frame, FrameHeader,
    },
    Bytes, Message,
};

/// Sends `request` on a new connection and returns everything the gateway answers until
/// it closes the connection.
async fn exchange(address: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes in time")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

const UPGRADE: &str = "Host: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn handshakes_that_cannot_upgrade_get_an_http_answer_not_a_silent_close() {
    let gw = TestGateway::start().await;
    let old_version = exchange(
        gw.ocpp,
        &format!("GET /ocpp/CP-1 HTTP/1.1\r\n{UPGRADE}Sec-WebSocket-Version: 8\r\n\r\n"),
    )
    .await;
    assert!(old_version.starts_with("HTTP/1.1 426 "), "{old_version}");
    assert!(
        old_version
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13\r\n"),
        "{old_version}"
    );
    // A scraper pointed at the OCPP port by mistake.
    let plain = exchange(gw.ocpp, "GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
    let http10 = exchange(
        gw.ocpp,
        &format!("GET /ocpp/CP-1 HTTP/1.0\r\n{UPGRADE}Sec-WebSocket-Version: 13\r\n\r\n"),
    )
    .await;
    assert!(http10.starts_with("HTTP/1.1 400 "), "{http10}");
    for (result, count) in [
        ("unsupported_websocket_version", 1.0),
        ("not_websocket", 1.0),
        ("bad_request", 1.0),
    ] {
        let series = format!(r#"ocppgw_connection_attempts_total{{result="{result}"}}"#);
        assert_eq!(gw.sample(&series).await, Some(count), "{series}");
    }
}

#[tokio::test]
async fn a_raw_hash_in_the_path_is_refused_and_leaves_the_real_charge_point_alone() {
    let gw = TestGateway::start().await;
    let mut real = gw.connect("CP", &["ocpp1.6"]).await;
    let answer = exchange(
        gw.ocpp,
        &format!("GET /ocpp/CP#x HTTP/1.1\r\n{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // Before the fix, `CP#x` was read as `CP` and replaced this session.
    assert_eq!(real.call("1", "Heartbeat", json!({})).await[0], 3);
    let (status, connection) = gw.get("/api/v1/connections/CP").await;
    assert_eq!(status, 200, "{connection}");
}

#[tokio::test]
async fn a_text_frame_with_invalid_utf8_is_closed_with_1007() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("UTF-1", &["ocpp1.6"]).await;
    let frame = Frame::message(vec![b'[', 0xC3, 0x28, b']'], OpCode::Data(Data::Text), true);
    cp.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(cp.closed().await, (1007, "invalid_utf8".to_owned()));
    let closed = gw
        .wait_for_event("UTF-1", |e| {
            e["type"] == "chargepointgateway.connection.closed"
        })
        .await;
    assert_eq!(closed["data"]["reason"], "invalid_utf8");
    assert_eq!(closed["data"]["closeCode"], 1007);
    assert_eq!(
        gw.sample(r#"ocppgw_invalid_frames_total{kind="invalid_utf8"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_close_reason_with_invalid_utf8_is_answered_with_1007() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("UTF-2", &["ocpp1.6"]).await;
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    let payload = Bytes::from_static(&[0x03, 0xE8, 0xFF, 0xFE]);
    cp.ws
        .send(Message::Frame(Frame::from_payload(header, payload)))
        .await
        .unwrap();
    assert_eq!(cp.closed().await, (1007, "invalid_utf8".to_owned()));
    let closed = gw
        .wait_for_event("UTF-2", |e| {
            e["type"] == "chargepointgateway.connection.closed"
        })
        .await;
    assert_eq!(closed["data"]["reason"], "invalid_utf8");
}

#[tokio::test]
async fn a_peer_that_pings_without_reading_is_slowed_then_dropped() {
    let gw = TestGateway::start_with(|c| {
        c.session.ping_interval = Duration::ZERO;
        c.session.pong_timeout = Duration::from_secs(1);
    })
    .await;
    // A client that never reads: every pong the gateway owes stays with the gateway
    // unless it stops reading.
    let ws = gw.connect_without_reading("PINGER-1").await;
    let (mut sink, _unread) = ws.split();
    const PINGS: usize = 1_000_000;
    let pinger = tokio::spawn(async move {
        let payload = Bytes::from(vec![b'p'; 125]);
        for sent in 0..PINGS {
            if sink.send(Message::Ping(payload.clone())).await.is_err() {
                return sent;
            }
        }
        PINGS
    });
    let closed = gw
        .wait_for_event_within("PINGER-1", Duration::from_secs(60), |e| {
            e["type"] == "chargepointgateway.connection.closed"
        })
        .await;
    assert_eq!(closed["data"]["reason"], "connection_lost");
    let sent = tokio::time::timeout(Duration::from_secs(30), pinger)
        .await
        .expect("the pinger's writes fail once the gateway dropped it")
        .unwrap();
    // Before the fix the gateway read all of them (about 200 bytes of memory each) and
    // never closed the connection.
    assert!(sent < PINGS, "all {PINGS} pings were taken");
    let mut other = gw.connect("OTHER-2", &["ocpp1.6"]).await;
    assert_eq!(other.call("1", "Heartbeat", json!({})).await[0], 3);
}

/// Waits until a scrape shows `series` at `value` (the metrics listener is separate from
/// the admin one, so scraping does not take an admin place).
async fn wait_for_sample(gw: &TestGateway, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + STEP;
    while gw.sample(series).await != Some(value) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the gateway closes `stream` (reading and discarding what it sends).
async fn closed_by_gateway(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection in time")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn idle_partial_and_kept_alive_http_connections_are_closed_after_the_idle_timeout() {
    let gw = TestGateway::start_with(|c| {
        c.admin.idle_timeout = Duration::from_secs(1);
        c.metrics.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let metrics = gw.metrics.unwrap();
    for address in [gw.admin, metrics] {
        let mut idle = TcpStream::connect(address).await.unwrap();
        let mut partial = TcpStream::connect(address).await.unwrap();
        partial
            .write_all(b"GET /livez HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let mut kept_alive = TcpStream::connect(address).await.unwrap();
        kept_alive
            .write_all(b"GET /livez HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let bound = Duration::from_secs(10);
        closed_by_gateway(&mut idle, bound).await;
        closed_by_gateway(&mut partial, bound).await;
        let served = closed_by_gateway(&mut kept_alive, bound).await;
        assert!(served.starts_with("HTTP/1.1 "), "{served}");
    }
}

#[tokio::test]
async fn the_admin_listener_caps_connections_and_keeps_places_for_probes() {
    let gw = TestGateway::start_with(|c| {
        c.admin.max_connections = 8;
        c.admin.idle_timeout = Duration::from_secs(60);
    })
    .await;
    // Four ordinary places, held by clients that send nothing.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    // The next connections get probe places: health only, one request each.
    let api = exchange(
        gw.admin,
        "GET /api/v1/connections HTTP/1.1\r\nHost: gw\r\n\r\n",
    )
    .await;
    assert!(api.starts_with("HTTP/1.1 503 "), "{api}");
    let probe = exchange(gw.admin, "GET /livez HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert!(probe.starts_with("HTTP/1.1 200 "), "{probe}");
    // Every place taken (once the probes' connections have ended): closed at once, and
    // counted.
    let open = r#"ocppgw_http_connections{listener="admin"}"#;
    wait_for_sample(&gw, open, 4.0).await;
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    wait_for_sample(&gw, open, 8.0).await;
    let mut refused = TcpStream::connect(gw.admin).await.unwrap();
    let answer = closed_by_gateway(&mut refused, STEP).await;
    assert!(answer.is_empty(), "{answer}");
    assert_eq!(
        gw.sample(r#"ocppgw_http_connections_refused_total{listener="admin"}"#)
            .await,
        Some(1.0)
    );
    // Charge points are not affected.
    let mut cp = gw.connect("CAP-1", &["ocpp1.6"]).await;
    assert_eq!(cp.call("1", "Heartbeat", json!({})).await[0], 3);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_at_once() {
    let gw = TestGateway::start().await;
    let answer = exchange(
        gw.admin,
        "POST /api/v1/charge-points/CP-1/commands HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_case_insensitively() {
    let gw = TestGateway::start_with(|c| c.admin.api_token = Some("s3cret".into())).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let answer = exchange(
            gw.admin,
            &format!("GET /api/v1/connections HTTP/1.1\r\nHost: gw\r\nAuthorization: {scheme} s3cret\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{scheme}: {answer}");
    }
    let wrong = exchange(
        gw.admin,
        "GET /api/v1/connections HTTP/1.1\r\nHost: gw\r\nAuthorization: bearer nope\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401 "), "{wrong}");
}

#[tokio::test]
async fn debug_traces_refuse_ids_no_charge_point_can_have() {
    let gw = TestGateway::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for id in ["a%20b", "%C3%A9t%C3%A9", &"x".repeat(100)] {
        let response = client
            .put(format!(
                "http://{}/api/v1/charge-points/{id}/debug-trace",
                gw.admin
            ))
            .json(&json!({"minutes": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{id}");
    }
    let (status, traces) = gw.get("/api/v1/debug-traces").await;
    assert_eq!(status, 200);
    assert_eq!(traces["debugTraces"], json!([]));
    let response = client
        .put(format!(
            "http://{}/api/v1/charge-points/CP%23x/debug-trace",
            gw.admin
        ))
        .json(&json!({"minutes": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn the_metrics_content_type_is_what_the_docs_say() {
    let gw = TestGateway::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/metrics", gw.metrics.unwrap());
    let content_type = |response: &reqwest::Response| {
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let classic = content_type(&client.get(&url).send().await.unwrap());
    let openmetrics = content_type(
        &client
            .get(&url)
            .header(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(classic, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        openmetrics,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    for served in [classic, openmetrics] {
        assert!(
            doc.contains(&format!("`Content-Type: {served}`")),
            "docs/metrics.md does not state {served}"
        );
    }
}
