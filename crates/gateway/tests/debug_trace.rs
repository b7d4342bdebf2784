//! Per-charge-point debug traces and rate-limited logs, read from the gateway's own log
//! output (this test binary installs a subscriber that writes JSON lines to memory).

use gateway_testkit as common;

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use common::TestGateway;
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_span_list(true)
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .init();
        captured
    })
}

fn lines(filter: impl Fn(&Value) -> bool) -> Vec<Value> {
    let bytes = logs().0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| filter(v))
        .collect()
}

fn trace_lines(cp: &str) -> Vec<Value> {
    lines(|v| {
        v["message"] == "debug trace"
            && v["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["charge_point_id"] == cp))
    })
}

#[tokio::test]
async fn a_debug_trace_logs_redacted_frames_until_stopped() {
    logs();
    let gw = TestGateway::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/v1/charge-points/DBG-1/debug-trace", gw.admin);
    let started = client
        .put(&url)
        .json(&json!({"minutes": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status().as_u16(), 200);
    let refused = client
        .put(&url)
        .json(&json!({"minutes": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    assert_eq!(
        gw.get("/api/v1/debug-traces").await.1["debugTraces"][0]["chargePointId"],
        "DBG-1"
    );

    let mut traced = gw.connect("DBG-1", &["ocpp1.6"]).await;
    let mut untraced = gw.connect("DBG-2", &["ocpp1.6"]).await;
    let start = json!({"connectorId": 1, "idTag": "SECRET-TAG", "meterStart": 0, "timestamp": "2024-01-01T00:00:00Z"});
    assert_eq!(
        traced.call("t1", "StartTransaction", start.clone()).await[0],
        3
    );
    assert_eq!(untraced.call("u1", "StartTransaction", start).await[0], 3);

    let traced_lines = trace_lines("DBG-1");
    let directions: Vec<_> = traced_lines
        .iter()
        .map(|l| l["direction"].clone())
        .collect();
    assert_eq!(directions, [json!("in"), json!("out")], "{traced_lines:?}");
    let inbound = traced_lines[0]["frame"].as_str().unwrap();
    assert!(
        inbound.contains(r#""idTag":"***""#) && inbound.contains("StartTransaction"),
        "{inbound}"
    );
    assert!(trace_lines("DBG-2").is_empty());
    let all = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
    assert!(!all.contains("SECRET-TAG"), "an idTag reached the logs");

    assert_eq!(
        gw.delete("/api/v1/charge-points/DBG-1/debug-trace").await.0,
        200
    );
    assert_eq!(
        gw.delete("/api/v1/charge-points/DBG-1/debug-trace").await.0,
        404
    );
    assert_eq!(traced.call("t2", "Heartbeat", json!({})).await[0], 3);
    assert_eq!(
        trace_lines("DBG-1").len(),
        2,
        "nothing traced after the stop"
    );
}

#[tokio::test]
async fn a_flood_of_identical_warnings_is_rate_limited() {
    logs();
    let gw = TestGateway::start_with(|c| c.session.bad_message_limit = 1000).await;
    let mut cp = gw.connect("FLOOD-1", &["ocpp1.6"]).await;
    for _ in 0..200 {
        cp.send_text("not json").await;
    }
    for _ in 0..200 {
        assert_eq!(cp.frame().await[0], 4);
    }
    let warnings = lines(|v| {
        v["message"] == "invalid frame"
            && v["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["charge_point_id"] == "FLOOD-1"))
    });
    assert!(!warnings.is_empty());
    assert!(
        warnings.len() < 200,
        "{} of 200 identical warnings written",
        warnings.len()
    );
    assert!(
        warnings.iter().all(|w| w["suppressed"].is_u64()),
        "each line says how many were held back"
    );
    // Counting is not limited: the metric has all 200.
    assert_eq!(
        gw.sample(r#"ocppgw_invalid_frames_total{kind="not_json"}"#)
            .await,
        Some(200.0)
    );
}

#[tokio::test]
async fn log_level_control_needs_the_gateways_subscriber() {
    logs();
    let gw = TestGateway::start().await;
    // This process installed its own subscriber, not the gateway's reloadable one.
    let (status, body) = gw.get("/api/v1/log-level").await;
    assert_eq!(status, 503, "{body}");
}
