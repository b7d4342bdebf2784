//! The listener's admission limits against real sockets: per source address, handshakes
//! in progress, and the accept rate.

use gateway_testkit as common;

use std::time::{Duration, Instant};

use common::{TestGateway, STEP};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket handshake as charge point `id`, from `source`.
async fn handshake_from(gw: &TestGateway, source: [u8; 4], id: &str) -> bool {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let stream = socket.connect(gw.ocpp).await.unwrap();
    let mut request = gw.url(id).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "ocpp1.6".parse().unwrap());
    tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("the handshake ends in time")
        .is_ok()
}

/// Waits until `series` reads `value`.
async fn wait_for_sample(gw: &TestGateway, series: &str, value: f64) {
    tokio::time::timeout(STEP, async {
        while gw.sample(series).await != Some(value) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{series} never reached {value}"));
}

#[tokio::test]
async fn sockets_beyond_the_per_address_limit_are_closed_before_their_handshake() {
    let gw = TestGateway::start_with(|config| {
        config.listener.max_connections_per_address = 2;
    })
    .await;
    let first = gw.connect("A-1", &["ocpp1.6"]).await;
    let _second = gw.connect("A-2", &["ocpp1.6"]).await;

    // A third socket from 127.0.0.1 is closed without a word, whatever it sends.
    let mut third = TcpStream::connect(gw.ocpp).await.unwrap();
    let _ = third
        .write_all(b"GET /ocpp/A-3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(STEP, third.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    assert!(
        read.is_err() || answer.is_empty(),
        "got an answer: {answer:?}"
    );
    let refused = r#"ocppgw_connection_attempts_total{result="address_limit"}"#;
    assert_eq!(gw.sample(refused).await, Some(1.0));

    // Another address has places of its own.
    assert!(handshake_from(&gw, [127, 0, 0, 2], "B-1").await);

    // A closed connection frees its address's place (once the gateway has seen it go).
    drop(first);
    tokio::time::timeout(STEP, async {
        while !handshake_from(&gw, [127, 0, 0, 1], "A-3").await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the place of the closed connection comes free");
}

#[tokio::test]
async fn handshakes_beyond_the_cap_wait_for_a_place() {
    let gw = TestGateway::start_with(|config| {
        config.listener.max_handshakes = 2;
    })
    .await;
    // Two clients that never send their request hold both places.
    let silent = [
        TcpStream::connect(gw.ocpp).await.unwrap(),
        TcpStream::connect(gw.ocpp).await.unwrap(),
    ];
    wait_for_sample(&gw, r#"ocppgw_handshakes{state="running"}"#, 2.0).await;

    let url = gw.url("CP-WAITING");
    let waiting = tokio::spawn(async move { common::connect_url(&url, &["ocpp1.6"]).await });
    wait_for_sample(&gw, r#"ocppgw_handshakes{state="waiting"}"#, 1.0).await;
    assert!(!waiting.is_finished(), "a handshake went past the cap");

    // One place comes free and the waiting handshake completes.
    drop(silent);
    let connected = tokio::time::timeout(STEP, waiting)
        .await
        .expect("the waiting handshake completes")
        .unwrap();
    assert!(connected.is_ok());
    wait_for_sample(&gw, r#"ocppgw_handshakes{state="waiting"}"#, 0.0).await;
}

#[tokio::test]
async fn the_accept_rate_spreads_a_burst_out_without_refusing_it() {
    let gw = TestGateway::start_with(|config| {
        config.listener.accept_rate = 20;
    })
    .await;
    let started = Instant::now();
    let connects = (0..40).map(|i| {
        let url = gw.url(&format!("R-{i}"));
        tokio::spawn(async move { common::connect_url(&url, &["ocpp1.6"]).await })
    });
    let mut open = Vec::new();
    for connect in connects.collect::<Vec<_>>() {
        open.push(connect.await.unwrap().expect("no socket is refused"));
    }
    // 20 at once (a second's worth), then 20 more at 20 per second: never faster.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "40 sockets in {:?}",
        started.elapsed()
    );
    assert_eq!(gw.probe.connections(), open.len());
}

#[tokio::test]
async fn a_flooding_charge_point_is_read_later_and_loses_nothing() {
    let gw = TestGateway::start_with(|config| {
        config.session.max_messages_per_second = 100;
    })
    .await;
    let mut flooder = gw.connect("FLOOD", &["ocpp1.6"]).await;
    let started = Instant::now();
    for i in 0..200 {
        flooder
            .send_json(serde_json::json!([2, format!("f{i}"), "Heartbeat", {}]))
            .await;
    }
    // Another charge point is served meanwhile.
    let mut calm = gw.connect("CALM", &["ocpp1.6"]).await;
    let answer = calm.call("c1", "Heartbeat", serde_json::json!({})).await;
    assert_eq!(answer[0], 3);
    for i in 0..200 {
        assert_eq!(flooder.frame().await[1], format!("f{i}"));
    }
    // 100 at once, then 100 per second: the last is read a second in, not sooner.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "200 messages in {:?}",
        started.elapsed()
    );
    let pauses = gw.sample("ocppgw_message_rate_pauses_total").await;
    assert!(pauses.is_some_and(|pauses| pauses >= 1.0), "{pauses:?}");
}
