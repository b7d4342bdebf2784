//! Connection lifecycle: replacement, liveness, operator actions, events, shutdown.

use gateway_testkit as common;

use std::time::Duration;

use common::{boot_payload, TestGateway, STEP};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_new_connection_replaces_the_old_one() {
    let gw = TestGateway::start().await;
    let mut old = gw.connect("CP-1", &["ocpp1.6"]).await;
    let (_, before) = gw.get("/api/v1/connections/CP-1").await;
    let mut new = gw.connect("CP-1", &["ocpp2.0.1"]).await;
    assert_eq!(
        old.closed().await,
        (1000, "replaced_by_new_connection".to_owned())
    );
    let reply = new
        .call("1", "BootNotification", boot_payload("ocpp2.0.1"))
        .await;
    assert_eq!(reply[0], 3);
    let (_, after) = gw.get("/api/v1/connections/CP-1").await;
    assert_eq!(after["ocppVersion"], "ocpp2.0.1");
    assert_ne!(after["connectionId"], before["connectionId"]);
    // The old session's end must not unregister the new one.
    let closed = gw
        .wait_for_event("CP-1", |e| {
            e["type"] == "chargepointgateway.connection.closed"
        })
        .await;
    assert_eq!(closed["data"]["connectionId"], before["connectionId"]);
    assert_eq!(closed["data"]["reason"], "replaced_by_new_connection");
    let (status, _) = gw.get("/api/v1/connections/CP-1").await;
    assert_eq!(status, 200);
    assert_eq!(gw.get("/api/v1/connections").await.1["total"], 1);
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_pong_deadline() {
    let gw = TestGateway::start_with(|c| {
        c.session.ping_interval = Duration::from_millis(100);
        c.session.pong_timeout = Duration::from_millis(200);
    })
    .await;
    // This client never reads, so its WebSocket library never answers the pings.
    let _silent = gw.connect("CP-SILENT", &["ocpp1.6"]).await;
    let closed = gw
        .wait_for_event("CP-SILENT", |e| {
            e["type"] == "chargepointgateway.connection.closed"
        })
        .await;
    assert_eq!(closed["data"]["reason"], "ping_timeout");
    assert_eq!(gw.get("/api/v1/connections/CP-SILENT").await.0, 404);
}

#[tokio::test]
async fn a_peer_that_answers_pings_stays_connected() {
    let gw = TestGateway::start_with(|c| {
        c.session.ping_interval = Duration::from_millis(50);
        c.session.pong_timeout = Duration::from_millis(500);
    })
    .await;
    let mut cp = gw.connect("CP-ALIVE", &["ocpp1.6"]).await;
    let mut pings = 0;
    while pings < 5 {
        match tokio::time::timeout(STEP, cp.ws.next()).await.unwrap() {
            // Reading makes the client answer with a pong.
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(cp.call("1", "Heartbeat", json!({})).await[0], 3);
    assert_eq!(gw.get("/api/v1/connections/CP-ALIVE").await.0, 200);
}

#[tokio::test]
async fn operator_disconnect_and_connection_listing() {
    let gw = TestGateway::start().await;
    let mut cps = Vec::new();
    for id in ["C", "A", "B"] {
        cps.push(gw.connect(id, &["ocpp1.6"]).await);
    }
    let (_, page1) = gw.get("/api/v1/connections?limit=2").await;
    assert_eq!(page1["total"], 3);
    let ids: Vec<_> = page1["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chargePointId"].clone())
        .collect();
    assert_eq!(ids, [json!("A"), json!("B")]);
    assert_eq!(page1["nextAfter"], "B");
    let (_, page2) = gw.get("/api/v1/connections?limit=2&after=B").await;
    assert_eq!(page2["connections"][0]["chargePointId"], "C");
    assert_eq!(page2["nextAfter"], json!(null));
    let first = &page1["connections"][0];
    assert!(first["peerAddress"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(first["connectedSince"].is_string());
    assert_eq!(gw.get("/api/v1/connections?limit=0").await.0, 400);
    assert_eq!(gw.get("/api/v1/connections?limit=x").await.0, 400);

    let (status, _) = gw.delete("/api/v1/connections/C").await;
    assert_eq!(status, 202);
    assert_eq!(
        cps[0].closed().await,
        (1000, "disconnected_by_operator".to_owned())
    );
    gw.wait_for_event("C", |e| e["type"] == "chargepointgateway.connection.closed")
        .await;
    assert_eq!(gw.delete("/api/v1/connections/C").await.0, 404);
    assert_eq!(gw.get("/api/v1/nothing-here").await.0, 404);
}

#[tokio::test]
async fn events_describe_messages_exactly_as_received() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("CP-EV", &["ocpp1.6"]).await;
    let raw = r#"[2,"m1","StartTransaction",{"connectorId": 1, "idTag": "TAG", "meterStart": 0,  "timestamp": "2024-05-01T10:00:00Z"}]"#;
    cp.send_text(raw).await;
    let reply = cp.frame().await;
    assert!(reply[2]["transactionId"].is_i64(), "{reply}");
    let event = gw
        .wait_for_event("CP-EV", |e| e["data"]["action"] == "StartTransaction")
        .await;
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "chargepointgateway.message.received");
    assert_eq!(event["subject"], "CP-EV");
    assert_eq!(event["source"], "/charge-point-gateway/test-node");
    assert_eq!(event["datacontenttype"], "application/json");
    let data = &event["data"];
    assert_eq!(data["ocppVersion"], "ocpp1.6");
    assert_eq!(data["messageType"], "call");
    assert_eq!(data["messageId"], "m1");
    assert_eq!(data["gatewayNode"], "test-node");
    assert_eq!(data["payload"]["meterStart"], 0);
    let raw_text = reqwest::get(format!(
        "http://{}/api/v1/events?chargePointId=CP-EV",
        gw.admin
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        raw_text.contains(r#""meterStart": 0,  "timestamp""#),
        "payload not verbatim: {raw_text}"
    );
    let (_, list) = gw.get("/api/v1/events?chargePointId=CP-EV&limit=1").await;
    assert_eq!(list["events"].as_array().unwrap().len(), 1);
    assert_eq!(gw.get("/api/v1/events?limit=0").await.0, 400);
}

#[tokio::test]
async fn events_file_gets_payloads_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let file = path.clone();
    let mut gw = TestGateway::start_with(move |c| {
        c.events.output = charge_point_gateway::config::EventOutput::File;
        c.events.file = Some(file);
    })
    .await;
    let mut cp = gw.connect("CP-F", &["ocpp2.0.1"]).await;
    cp.send_text(r#"[2,"x","Heartbeat",{ }]"#).await;
    assert_eq!(cp.frame().await[0], 3);
    gw.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let heartbeat = text
        .lines()
        .find(|l| l.contains(r#""action":"Heartbeat""#))
        .expect("heartbeat event");
    assert!(heartbeat.contains(r#""payload":{ }"#), "{heartbeat}");
    assert!(text
        .lines()
        .any(|l| l.contains("chargepointgateway.connection.closed")));
}

#[tokio::test]
async fn health_endpoints() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.get("/livez").await, (200, json!({"status": "ok"})));
    assert_eq!(gw.get("/readyz").await, (200, json!({"ready": true})));
    let (status, health) = gw.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "up");
    assert_eq!(health["components"]["eventSink"]["status"], "up");
    assert_eq!(health["components"]["listener"]["status"], "up");
}

#[tokio::test]
async fn graceful_shutdown_closes_connections_with_1001_and_stops_listening() {
    let mut gw =
        TestGateway::start_with(|c| c.shutdown.drain_time = Duration::from_millis(300)).await;
    let mut a = gw.connect("CP-A", &["ocpp1.6"]).await;
    let mut b = gw.connect("CP-B", &["ocpp2.1"]).await;
    let ocpp = gw.ocpp;
    let admin = gw.admin;
    let stopping = tokio::spawn(async move {
        gw.stop().await;
        gw
    });
    assert_eq!(a.closed().await, (1001, "gateway_shutdown".to_owned()));
    assert_eq!(b.closed().await, (1001, "gateway_shutdown".to_owned()));
    let _gw = tokio::time::timeout(STEP, stopping).await.unwrap().unwrap();
    // Stopped: nothing listens any more.
    assert!(tokio::net::TcpStream::connect(ocpp).await.is_err());
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn api_token_guards_the_api_but_not_the_probes() {
    let gw = TestGateway::start_with(|c| c.admin.api_token = Some("s3cret".into())).await;
    let _cp = gw.connect("CP-T", &["ocpp1.6"]).await;
    assert_eq!(gw.get("/livez").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 200);
    let (status, body) = gw.get("/api/v1/connections").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        gw.post(
            "/api/v1/charge-points/CP-T/commands",
            json!({"action": "ClearCache", "payload": {}})
        )
        .await
        .0,
        401
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/v1/connections", gw.admin);
    let wrong = client.get(&url).bearer_auth("s3creT").send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = client.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(right.status().as_u16(), 200);
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_dropped_after_the_write_timeout() {
    let gw = TestGateway::start_with(|c| {
        c.session.ping_interval = Duration::ZERO;
        c.session.pong_timeout = Duration::from_secs(1);
        // Under the message rate the flood would be read slowly and its answers would take
        // minutes to fill the socket; this is about the write timeout alone.
        c.session.max_messages_per_second = 0;
    })
    .await;
    // A tiny receive buffer and a client that never reads: the gateway's answers pile up
    // until its writes cannot complete.
    let ws = gw.connect_without_reading("STUCK-1").await;
    let (mut sink, _unread) = futures_util::StreamExt::split(ws);
    let writer = tokio::spawn(async move {
        let padding = "x".repeat(200);
        for i in 0..100_000 {
            let frame =
                json!([2, i.to_string(), "DataTransfer", {"vendorId": padding}]).to_string();
            if futures_util::SinkExt::send(&mut sink, Message::text(frame))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let closed = gw
        .wait_for_event_within("STUCK-1", Duration::from_secs(60), |e| {
            e["type"] == "chargepointgateway.connection.closed"
        })
        .await;
    assert_eq!(closed["data"]["reason"], "connection_lost");
    writer.abort();
    // The gateway serves others meanwhile.
    let mut other = gw.connect("OTHER-1", &["ocpp1.6"]).await;
    assert_eq!(other.call("1", "Heartbeat", json!({})).await[0], 3);
}

/// The binary on `admin_address` with `env`: its exit status and what it printed, or
/// `None` when it started (it is then stopped).
fn start_binary(admin_address: &str, env: &[(&str, &str)]) -> Option<(i32, String)> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_charge-point-gateway"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", admin_address])
        .args(["--metrics-listen", "127.0.0.1:0", "--events", "none"])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the gateway binary runs");
    // A refused configuration exits at once; a started gateway logs its listeners.
    let Some(stderr) = child.stderr.take() else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no stderr pipe");
    };
    let mut stderr = std::io::BufReader::new(stderr);
    let mut printed = String::new();
    loop {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0);
        if read == 0 {
            let code = child.wait().ok().and_then(|status| status.code());
            return Some((code.unwrap_or(-1), printed));
        }
        if line.contains("admin listener bound") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        printed.push_str(&line);
    }
}

#[test]
fn the_admin_api_beyond_loopback_needs_a_token_or_an_explicit_opt_out() {
    let (status, printed) =
        start_binary("0.0.0.0:0", &[]).expect("refused without a token beyond loopback");
    assert_eq!(status, 2, "{printed}");
    assert!(printed.contains("admin.api_token"), "{printed}");
    assert!(printed.contains("allow_unauthenticated"), "{printed}");
    let token = [("CPGW_ADMIN__API_TOKEN", "a-long-random-token")];
    assert_eq!(
        start_binary("0.0.0.0:0", &token),
        None,
        "starts with a token"
    );
    let opted_out = [("CPGW_ADMIN__ALLOW_UNAUTHENTICATED", "true")];
    assert_eq!(
        start_binary("0.0.0.0:0", &opted_out),
        None,
        "starts when told to"
    );
    assert_eq!(
        start_binary("127.0.0.1:0", &[]),
        None,
        "loopback needs no token"
    );
}
