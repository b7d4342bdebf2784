//! Metrics after scripted flows: exact values, closed label sets, and the docs.

use gateway_testkit as common;

use std::collections::BTreeSet;

use charge_point_gateway::metrics::family_names;
use common::{boot_payload, TestGateway};
use serde_json::json;

fn documented_metrics() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `ocppgw_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("ocppgw_{name}"))
        .collect()
}

fn without_total(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    names
        .into_iter()
        .map(|n| n.strip_suffix("_total").map(str::to_owned).unwrap_or(n))
        .collect()
}

#[tokio::test]
async fn metrics_doc_matches_the_registry() {
    let gw = TestGateway::start().await;
    let registered = without_total(gw.probe.metric_names().iter().map(|n| n.to_string()));
    // Without Kafka the Kafka families are absent; kafka.rs checks them with Kafka on.
    let documented: BTreeSet<String> = without_total(documented_metrics())
        .into_iter()
        .filter(|name| !name.starts_with("ocppgw_kafka_") && name != "ocppgw_commands_consumed")
        .collect();
    // Everything a scrape shows is registered (collectors included).
    let scraped = without_total(family_names(&gw.scrape().await));
    let unregistered: Vec<_> = scraped.difference(&registered).collect();
    assert!(
        unregistered.is_empty(),
        "scraped but not registered: {unregistered:?}"
    );
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "registered but not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "in docs/metrics.md but not registered: {missing:?}"
    );
}

#[tokio::test]
async fn known_series_start_at_zero() {
    let gw = TestGateway::start().await;
    for series in [
        r#"ocppgw_messages_received_total{ocpp_version="ocpp1.6",message_type="call",action="Heartbeat"}"#,
        r#"ocppgw_messages_received_total{ocpp_version="ocpp2.1",message_type="callresult",action="Reset"}"#,
        r#"ocppgw_connection_attempts_total{result="unsupported_subprotocol"}"#,
        r#"ocppgw_disconnects_total{reason="ping_timeout"}"#,
        r#"ocppgw_invalid_frames_total{kind="not_json"}"#,
        r#"ocppgw_connections{ocpp_version="ocpp2.0.1"}"#,
        r#"ocppgw_messages_sent_total{ocpp_version="ocpp1.6",message_type="call",action="Reset"}"#,
        r#"ocppgw_messages_sent_total{ocpp_version="ocpp2.1",message_type="callerror",action="Heartbeat"}"#,
        r#"ocppgw_call_errors_total{direction="outbound",error_code="NotSupported"}"#,
        r#"ocppgw_events_published_total{event_type="connection_closed",outcome="error"}"#,
    ] {
        assert_eq!(gw.sample(series).await, Some(0.0), "{series}");
    }
    assert_eq!(
        gw.sample(r#"ocppgw_build_info{version=""#).await,
        None,
        "prefix lookups need full series"
    );
    assert_eq!(gw.sample("ocppgw_ready").await, Some(1.0));
}

#[tokio::test]
async fn three_heartbeats_count_three() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("M-1", &["ocpp1.6"]).await;
    for i in 0..3 {
        assert_eq!(cp.call(&i.to_string(), "Heartbeat", json!({})).await[0], 3);
    }
    let heartbeat = r#"ocppgw_messages_received_total{ocpp_version="ocpp1.6",message_type="call",action="Heartbeat"}"#;
    assert_eq!(gw.sample(heartbeat).await, Some(3.0));
    let sent = r#"ocppgw_messages_sent_total{ocpp_version="ocpp1.6",message_type="callresult",action="Heartbeat"}"#;
    assert_eq!(gw.sample(sent).await, Some(3.0));
    assert_eq!(
        gw.sample(r#"ocppgw_connections{ocpp_version="ocpp1.6"}"#)
            .await,
        Some(1.0)
    );
    let calls = r#"ocppgw_call_duration_seconds_count{direction="inbound",action="Heartbeat",outcome="completed"}"#;
    assert_eq!(gw.sample(calls).await, Some(3.0));
    let processing = r#"ocppgw_message_processing_duration_seconds_count{ocpp_version="ocpp1.6",action="Heartbeat"}"#;
    assert_eq!(gw.sample(processing).await, Some(3.0));
}

#[tokio::test]
async fn unknown_actions_are_other_and_never_unknown() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("M-2", &["ocpp2.0.1"]).await;
    assert_eq!(
        cp.call("1", "MakeCoffee", json!({})).await[2],
        "NotImplemented"
    );
    let other = r#"ocppgw_messages_received_total{ocpp_version="ocpp2.0.1",message_type="call",action="_OTHER"}"#;
    assert_eq!(gw.sample(other).await, Some(1.0));
    let errors = r#"ocppgw_call_errors_total{direction="inbound",error_code="NotImplemented"}"#;
    assert_eq!(gw.sample(errors).await, Some(1.0));
    let text = gw.scrape().await;
    assert!(
        !text.contains("unknown"),
        "no label value is ever \"unknown\""
    );
    assert!(!text.contains("M-2"), "no charge point id in any label");
}

#[tokio::test]
async fn refusals_invalid_frames_and_disconnects_move_their_series() {
    let gw = TestGateway::start_with(|c| c.session.bad_message_limit = 2).await;
    assert!(gw.try_connect("R-1", &["ocpp9"]).await.is_err());
    assert!(gw.try_connect("bad%20id", &["ocpp1.6"]).await.is_err());
    let mut cp = gw.connect("R-2", &["ocpp1.6"]).await;
    cp.send_text("not json").await;
    cp.frame().await;
    cp.send_text("{}").await;
    cp.frame().await;
    cp.closed().await;
    gw.wait_for_event("R-2", |e| {
        e["type"] == "chargepointgateway.connection.closed"
    })
    .await;
    for (series, value) in [
        (
            r#"ocppgw_connection_attempts_total{result="unsupported_subprotocol"}"#,
            1.0,
        ),
        (
            r#"ocppgw_connection_attempts_total{result="bad_charge_point_id"}"#,
            1.0,
        ),
        (
            r#"ocppgw_connection_attempts_total{result="accepted"}"#,
            1.0,
        ),
        (r#"ocppgw_invalid_frames_total{kind="not_json"}"#, 1.0),
        (r#"ocppgw_invalid_frames_total{kind="not_array"}"#, 1.0),
        (
            r#"ocppgw_disconnects_total{reason="too_many_bad_messages"}"#,
            1.0,
        ),
        (
            r#"ocppgw_call_errors_total{direction="inbound",error_code="FormatViolation"}"#,
            1.0,
        ),
        (
            r#"ocppgw_call_errors_total{direction="inbound",error_code="RpcFrameworkError"}"#,
            1.0,
        ),
        (r#"ocppgw_connections{ocpp_version="ocpp1.6"}"#, 0.0),
        ("ocppgw_connection_duration_seconds_count", 1.0),
    ] {
        assert_eq!(gw.sample(series).await, Some(value), "{series}");
    }
}

#[tokio::test]
async fn command_outcomes_and_pending_calls() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("C-1", &["ocpp1.6"]).await;
    let command = gw.command(
        "C-1",
        json!({"action": "Reset", "payload": {"type": "Soft"}}),
    );
    let call = cp.frame().await;
    assert_eq!(gw.sample("ocppgw_pending_calls").await, Some(1.0));
    cp.send_json(json!([4, call[1], "NotSupported", "", {}]))
        .await;
    assert_eq!(command.await.unwrap().0, 200);
    gw.post(
        "/api/v1/charge-points/NOBODY/commands",
        json!({"action": "Reset", "payload": {"type": "Soft"}}),
    )
    .await;
    gw.post(
        "/api/v1/charge-points/C-1/commands",
        json!({"action": "Reset", "payload": {}}),
    )
    .await;
    for (series, value) in [
        (
            r#"ocppgw_commands_total{source="admin",action="Reset",outcome="callError"}"#,
            1.0,
        ),
        (
            r#"ocppgw_commands_total{source="admin",action="Reset",outcome="notConnected"}"#,
            1.0,
        ),
        (
            r#"ocppgw_commands_total{source="admin",action="Reset",outcome="invalid"}"#,
            1.0,
        ),
        (
            r#"ocppgw_call_errors_total{direction="outbound",error_code="NotSupported"}"#,
            1.0,
        ),
        (
            r#"ocppgw_call_duration_seconds_count{direction="outbound",action="Reset",outcome="callError"}"#,
            1.0,
        ),
        ("ocppgw_pending_calls", 0.0),
    ] {
        assert_eq!(gw.sample(series).await, Some(value), "{series}");
    }
    let received = r#"ocppgw_messages_received_total{ocpp_version="ocpp1.6",message_type="callerror",action="Reset"}"#;
    assert_eq!(gw.sample(received).await, Some(1.0));
}

#[tokio::test]
async fn durable_ingest_and_events_are_measured() {
    let gw = TestGateway::start().await;
    let mut cp = gw.connect("I-1", &["ocpp2.0.1"]).await;
    assert_eq!(
        cp.call("b", "BootNotification", boot_payload("ocpp2.0.1"))
            .await[0],
        3
    );
    let status = json!({"timestamp": "2024-01-01T00:00:00", "connectorStatus": "Available", "evseId": 1, "connectorId": 1});
    assert_eq!(cp.call("s", "StatusNotification", status).await[0], 3);
    for (series, value) in [
        (
            r#"ocppgw_ingest_duration_seconds_count{action="BootNotification"}"#,
            1.0,
        ),
        (
            r#"ocppgw_ingest_duration_seconds_count{action="StatusNotification"}"#,
            1.0,
        ),
        (
            r#"ocppgw_timestamps_without_zone_total{ocpp_version="ocpp2.0.1"}"#,
            1.0,
        ),
        (
            r#"ocppgw_events_published_total{event_type="message_received",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"ocppgw_events_published_total{event_type="connection_opened",outcome="ok"}"#,
            1.0,
        ),
    ] {
        assert_eq!(gw.sample(series).await, Some(value), "{series}");
    }
    let text = gw.scrape().await;
    for family in [
        "ocppgw_process_open_fds",
        "ocppgw_process_resident_memory_bytes",
        "ocppgw_runtime_alive_tasks",
    ] {
        assert!(text.contains(&format!("\n{family} ")), "{family} missing");
    }
    assert!(text.ends_with("# EOF\n"));
}
